"""COCO: detection and keypoint annotations in the MS COCO json format (also the base of Objects365)."""
import json
import os
from collections import defaultdict

import numpy as np

from .folder import imread
from .meta_vision import VisionDataset

__all__ = ["COCO"]

# an image counts for keypoint training only with at least this many visible keypoints
# (upstream's and maskrcnn-benchmark's rule)
MIN_VISIBLE_KEYPOINTS = 10

# fields of an image record that no item uses; dropped on load since a full COCO train json
# holds 118k of them
_UNUSED_IMAGE_FIELDS = ("license", "coco_url", "date_captured", "flickr_url")


class CocoFormatDataset(VisionDataset):
    r"""Images under ``root`` described by a COCO-format annotation file.

    Items are tuples in the order of ``order``:

    * ``"image"``: (H, W, 3) uint8 BGR image read from ``root/<file_name>``;
    * ``"boxes"``: (N, 4) float32 boxes as ``x0, y0, x1, y1`` (the json's ``x, y, w, h``
      converted);
    * ``"boxes_category"``: (N,) int32 class of each box, 1-based: the json's category ids
      sorted and numbered from 1 (0 is left for the background);
    * ``"keypoints"`` (COCO only): (N, 17, 3) float32 ``x, y, visibility``;
    * ``"info"``: ``[height, width, file_name]`` from the image record.

    Images are in increasing ``id`` order. With ``remove_images_without_annotations``, crowd
    annotations and boxes of zero width or height are dropped and images left without a usable
    annotation are skipped, as detection training wants.
    """

    supported_order = ("image", "boxes", "boxes_category", "info")
    # fields dropped from each image record (``get_img_info`` returns the rest)
    dropped_image_fields = ()

    def __init__(self, root, ann_file, remove_images_without_annotations=False, *, order=None):
        super().__init__(root, order=order, supported_order=self.supported_order)
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(
                "{}: annotation file {} does not exist; pass the path of the dataset's json "
                "(e.g. annotations/instances_train2017.json)".format(type(self).__name__, ann_file)
            )
        with open(ann_file, "r") as f:
            dataset = json.load(f)
        for key in ("images", "annotations", "categories"):
            if key not in dataset:
                raise ValueError("{}: {} has no {!r} list; is it a COCO-format annotation file?".format(
                    type(self).__name__, ann_file, key))

        wants_boxes = "boxes" in self.order or "boxes_category" in self.order
        self.imgs = {}
        for img in dataset["images"]:
            for key in self.dropped_image_fields:
                img.pop(key, None)
            self.imgs[img["id"]] = img

        self.img_to_anns = defaultdict(list)
        for ann in dataset["annotations"]:
            # polygons are never returned; boxes only when asked (memory on full-size jsons)
            ann.pop("segmentation", None)
            if not wants_boxes and not remove_images_without_annotations:
                ann.pop("bbox", None)
            self.img_to_anns[ann["image_id"]].append(ann)

        self.cats = {cat["id"]: cat for cat in dataset["categories"]}
        self.ids = sorted(self.imgs)

        if remove_images_without_annotations:
            kept = []
            for img_id in self.ids:
                anns = [
                    a for a in self.img_to_anns.get(img_id, [])
                    if a.get("iscrowd", 0) == 0 and a["bbox"][2] > 0 and a["bbox"][3] > 0
                ]
                if self._usable(anns):
                    kept.append(img_id)
                    self.img_to_anns[img_id] = anns
                else:
                    del self.imgs[img_id]
                    self.img_to_anns.pop(img_id, None)
            self.ids = kept

        self.json_category_id_to_contiguous_id = {
            cat_id: i + 1 for i, cat_id in enumerate(sorted(self.cats))
        }
        self.contiguous_category_id_to_json_id = {
            v: k for k, v in self.json_category_id_to_contiguous_id.items()
        }

    def _usable(self, anns) -> bool:
        """Whether an image's filtered annotations make it worth training on."""
        return len(anns) > 0

    def _field(self, key, img_id, anns):
        if key == "image":
            return imread(os.path.join(self.root, self.imgs[img_id]["file_name"]))
        if key == "boxes":
            boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]  # x, y, w, h -> x0, y0, x1, y1
            return boxes
        if key == "boxes_category":
            try:
                return np.array(
                    [self.json_category_id_to_contiguous_id[a["category_id"]] for a in anns],
                    dtype=np.int32,
                )
            except KeyError as e:
                raise ValueError("{}: an annotation of image {} has category_id {}, which is not in "
                                 "the file's categories".format(type(self).__name__, img_id, e.args[0])) from None
        if key == "info":
            img = self.imgs[img_id]
            return [img["height"], img["width"], img["file_name"]]
        raise AssertionError("unreachable: order was checked against supported_order")

    def __getitem__(self, index):
        img_id = self.ids[index]
        anns = self.img_to_anns.get(img_id, [])
        return tuple(self._field(key, img_id, anns) for key in self.order)

    def __len__(self):
        return len(self.ids)

    def get_img_info(self, index):
        """The json's record of the ``index``-th image: a dict with at least ``id``,
        ``file_name``, ``height`` and ``width`` (detection programs group images by aspect
        ratio with it, without reading them)."""
        return self.imgs[self.ids[index]]


class COCO(CocoFormatDataset):
    r"""`MS COCO <https://cocodataset.org/>`_ detection and keypoints.

    Args:
        root: the image directory (e.g. ``coco/train2017``).
        ann_file: the annotation json (e.g. ``coco/annotations/instances_train2017.json``).
        remove_images_without_annotations: skip images without a usable annotation (crowd
            boxes and empty boxes removed; for ``"keypoints"`` an image also needs at least
            10 visible keypoints).
        order: names of the item's fields, from ``("image", "boxes", "boxes_category",
            "keypoints", "info")``.

    ``class_names`` lists the 80 classes in contiguous order (``boxes_category - 1`` indexes
    it); ``classes_originID`` maps a class name to its id in the official json.
    """

    supported_order = ("image", "boxes", "boxes_category", "keypoints", "info")
    dropped_image_fields = _UNUSED_IMAGE_FIELDS

    def _usable(self, anns) -> bool:
        if not anns:
            return False
        if ("boxes" in self.order or "boxes_category" in self.order) and "bbox" not in anns[0]:
            return False
        if "keypoints" in self.order:
            if "keypoints" not in anns[0]:
                return False
            visible = sum(sum(1 for v in a["keypoints"][2::3] if v > 0) for a in anns)
            if visible < MIN_VISIBLE_KEYPOINTS:
                return False
        return True

    def _field(self, key, img_id, anns):
        if key == "keypoints":
            if any("keypoints" not in a for a in anns):
                raise ValueError(
                    "COCO: an annotation of image {} has no 'keypoints' (a detection "
                    "annotation file?): use a keypoints file (person_keypoints_*.json), or "
                    "leave \"keypoints\" out of order".format(img_id))
            points = [a["keypoints"] for a in anns]
            return np.array(points, dtype=np.float32).reshape(-1, len(self.keypoint_names), 3)
        return super()._field(key, img_id, anns)

    # the official 80 detection categories and their json ids (ids 12, 26, 29, 30, 45, 66, 68,
    # 69, 71 and 83 are unused in the released annotations)
    classes_originID = {
        "person": 1, "bicycle": 2, "car": 3, "motorcycle": 4, "airplane": 5, "bus": 6,
        "train": 7, "truck": 8, "boat": 9, "traffic light": 10, "fire hydrant": 11,
        "stop sign": 13, "parking meter": 14, "bench": 15, "bird": 16, "cat": 17, "dog": 18,
        "horse": 19, "sheep": 20, "cow": 21, "elephant": 22, "bear": 23, "zebra": 24,
        "giraffe": 25, "backpack": 27, "umbrella": 28, "handbag": 31, "tie": 32,
        "suitcase": 33, "frisbee": 34, "skis": 35, "snowboard": 36, "sports ball": 37,
        "kite": 38, "baseball bat": 39, "baseball glove": 40, "skateboard": 41,
        "surfboard": 42, "tennis racket": 43, "bottle": 44, "wine glass": 46, "cup": 47,
        "fork": 48, "knife": 49, "spoon": 50, "bowl": 51, "banana": 52, "apple": 53,
        "sandwich": 54, "orange": 55, "broccoli": 56, "carrot": 57, "hot dog": 58,
        "pizza": 59, "donut": 60, "cake": 61, "chair": 62, "couch": 63, "potted plant": 64,
        "bed": 65, "dining table": 67, "toilet": 70, "tv": 72, "laptop": 73, "mouse": 74,
        "remote": 75, "keyboard": 76, "cell phone": 77, "microwave": 78, "oven": 79,
        "toaster": 80, "sink": 81, "refrigerator": 82, "book": 84, "clock": 85, "vase": 86,
        "scissors": 87, "teddy bear": 88, "hair drier": 89, "toothbrush": 90,
    }
    class_names = tuple(sorted(classes_originID, key=classes_originID.get))

    keypoint_names = (
        "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
        "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
        "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    )
