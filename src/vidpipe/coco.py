"""Class names. COCO labels as SSD300 numbers them: label 0 is background, labels 1..80 are the 80
classes in COCO's category order. ``COCO_CATEGORY_IDS[label]`` maps a label to COCO's own
(non-contiguous, 1..90) category id, which COCO result files use. :class:`Classes` is what any
model family says about its class ids."""

from __future__ import annotations

from dataclasses import dataclass

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

COCO_CATEGORY_IDS: tuple[int, ...] = (
    0,
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)


@dataclass(frozen=True)
class Classes:
    """The name of each class id a family's results carry (``names[class_id]``) and, where the
    classes are COCO's, each id's COCO category id (``coco_ids``; None: COCO output uses the class
    id itself)."""

    names: tuple[str, ...]
    coco_ids: tuple[int, ...] | None = None

    def coco_id(self, class_id: int) -> int:
        return self.coco_ids[class_id] if self.coco_ids is not None else class_id

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...]) -> Classes:
        """Classes 0..N-1; the 80 COCO classes in COCO's order (as YOLO models trained on COCO
        number them) get COCO's category ids."""
        names = tuple(names)
        return cls(names, COCO_CATEGORY_IDS[1:] if names == CLASS_NAMES[1:] else None)


SSD300_CLASSES = Classes(CLASS_NAMES, COCO_CATEGORY_IDS)
