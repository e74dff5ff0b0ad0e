"""Your own detector through vidpipe's engine: any nn.Module that maps images to boxes, scores, labels.

Usage: python examples/own_model.py VIDEO
"""

import sys

import torch

import vidpipe
from vidpipe.models import register_model
from vidpipe.models.boxes import BoxesFamily


class MyDetector(torch.nn.Module):  # yours: a backbone and a head, a wrapped export, ...
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x):  # x: [N, 3, 384, 640], normalised
        y = self.net(x).mean((2, 3))  # [N, 6]: a toy "head", one box per image
        boxes = torch.stack([y[:, 0], y[:, 1], y[:, 0] + 100, y[:, 1] + 80], 1).abs()[:, None]
        return boxes, y[:, 4:5].sigmoid(), y[:, 5:6].abs().long() % 2  # boxes [N, 1, 4], scores, labels


family = BoxesFamily(MyDetector(), classes=["person", "car"], input_size=(384, 640),
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), score_threshold=0.3)
detector = vidpipe.Detector(vidpipe.Config(), model=family)
for r in vidpipe.detect(sys.argv[1], detector):
    print(r.frame, r.class_names, r.boxes.round().tolist())


# The same model by name, for Config(model="mine"); a module-level function (not a lambda) also
# reaches the worker processes of runs over several processes or GPUs.
def build_mine(config):
    return BoxesFamily(MyDetector(), classes=["person", "car"])


register_model("mine", build_mine)
