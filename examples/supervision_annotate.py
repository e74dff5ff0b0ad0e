"""A video's detections drawn with supervision's annotators: vidpipe's results as sv.Detections.

Usage: python examples/supervision_annotate.py VIDEO OUT.jpg [FRAME]
"""

import sys

import av
import cv2
import supervision as sv

import vidpipe

video, out = sys.argv[1], sys.argv[2]
wanted = int(sys.argv[3]) if len(sys.argv) > 3 else 0
detector = vidpipe.Detector(vidpipe.Config(weights="random"))  # drop weights= for NVIDIA's COCO checkpoint
result = next(r for r in vidpipe.detect(video, detector) if r.frame == wanted)
with av.open(video) as container:
    image = next(f for i, f in enumerate(container.decode(video=0)) if i == wanted).to_ndarray(format="bgr24")

detections = result.to_supervision()  # xyxy, confidence, class_id, data["class_name"]
labels = [f"{name} {score:.2f}" for name, score in zip(detections.data["class_name"], detections.confidence)]
image = sv.BoxAnnotator().annotate(image.copy(), detections)
image = sv.LabelAnnotator().annotate(image, detections, labels=labels)
cv2.imwrite(out, image)
print(f"{len(detections)} detections on frame {wanted} drawn into {out}")
