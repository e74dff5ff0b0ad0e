"""An obviously-correct CPU implementation of NVIDIA's SSD300 decode, written after
``Encoder.scale_back_batch`` / ``decode_single`` / ``calc_iou_tensor`` and the hub's ``pick_best``,
with ties broken explicitly (lower default-box index first, then lower label) so results are unique."""

from __future__ import annotations

import torch

from vidpipe.boxes import default_boxes


def calc_iou(box1: torch.Tensor, box2: torch.Tensor) -> torch.Tensor:
    lt = torch.max(box1[:, None, :2], box2[None, :, :2])
    rb = torch.min(box1[:, None, 2:], box2[None, :, 2:])
    delta = rb - lt
    delta[delta < 0] = 0
    intersect = delta[:, :, 0] * delta[:, :, 1]
    d1 = box1[:, 2:] - box1[:, :2]
    d2 = box2[:, 2:] - box2[:, :2]
    area1 = (d1[:, 0] * d1[:, 1])[:, None]
    area2 = (d2[:, 0] * d2[:, 1])[None, :]
    return intersect / (area1 + area2 - intersect)


def scale_back(locs: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dboxes = default_boxes().unsqueeze(0)
    b = locs.float().permute(0, 2, 1).clone()
    s = scores.float().permute(0, 2, 1)
    b[:, :, :2] = 0.1 * b[:, :, :2]
    b[:, :, 2:] = 0.2 * b[:, :, 2:]
    b[:, :, :2] = b[:, :, :2] * dboxes[:, :, 2:] + dboxes[:, :, :2]
    b[:, :, 2:] = b[:, :, 2:].exp() * dboxes[:, :, 2:]
    ltrb = torch.stack([b[:, :, 0] - 0.5 * b[:, :, 2], b[:, :, 1] - 0.5 * b[:, :, 3],
                        b[:, :, 0] + 0.5 * b[:, :, 2], b[:, :, 1] + 0.5 * b[:, :, 3]], dim=-1)
    return ltrb, torch.softmax(s, dim=-1)


def decode_single(bboxes_in, scores_in, criteria, max_output, max_num, cand_thr):
    out_boxes, out_scores, out_labels = [], [], []
    for label in range(1, scores_in.shape[1]):
        score = scores_in[:, label]
        mask = score > cand_thr
        idx_all = mask.nonzero().squeeze(1)
        if idx_all.numel() == 0:
            continue
        # descending by score, ties to the lower index; the best max_num
        order = sorted(idx_all.tolist(), key=lambda i: (-float(score[i]), i))[:max_num]
        remaining = torch.tensor(order)
        picked = []
        while remaining.numel() > 0:
            best = int(remaining[0])
            iou = calc_iou(bboxes_in[remaining], bboxes_in[best][None]).squeeze(1)
            remaining = remaining[1:][iou[1:] < criteria]
            picked.append(best)
        out_boxes.append(bboxes_in[picked])
        out_scores.append(score[picked])
        out_labels += [label] * len(picked)
    if not out_boxes:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    boxes = torch.cat(out_boxes)
    scores = torch.cat(out_scores)
    labels = torch.tensor(out_labels, dtype=torch.int64)
    ids = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))[:max_output]
    return boxes[ids], labels[ids], scores[ids]


def reference_decode(locs, scores, *, candidate_threshold=0.05, iou_threshold=0.5, max_detections=20,
                     per_class_candidates=200, score_threshold=0.3):
    boxes, probs = scale_back(locs, scores)
    results = []
    for b, p in zip(boxes, probs):
        ob, ol, os_ = decode_single(b, p, iou_threshold, max_detections, per_class_candidates,
                                    candidate_threshold)
        keep = os_ > score_threshold
        results.append((ob[keep], ol[keep], os_[keep]))
    return results
