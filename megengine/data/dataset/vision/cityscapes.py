"""Cityscapes: street scenes (leftImg8bit) with semantic label masks (gtFine / gtCoarse)."""
import os

import numpy as np

from .folder import imread, imread_grayscale
from .meta_vision import VisionDataset

__all__ = ["Cityscapes"]

# the labelIds of the 19 classes evaluated in Cityscapes' benchmark, in train-id order
# (cityscapesScripts' labels.py); every other labelId is ignored (255)
_EVAL_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


class Cityscapes(VisionDataset):
    r"""`Cityscapes <https://www.cityscapes-dataset.com/>`_ semantic segmentation.

    Args:
        root: the directory holding ``leftImg8bit/<image_set>/<city>/*_leftImg8bit.png`` and
            ``<mode>/<image_set>/<city>/*_<mode>_labelIds.png``.
        image_set: ``"train"``, ``"val"`` or ``"test"`` (``"train_extra"`` with gtCoarse).
        mode: ``"gtFine"`` or ``"gtCoarse"``.
        order: names of the item's fields, from ``("image", "mask", "info")``.

    Items: ``"image"`` (H, W, 3) uint8 BGR; ``"mask"`` (H, W, 1) uint8 train id 0-18 (the
    19 classes of ``class_names``), 255 for ignored labels; ``"info"`` ``[height, width,
    image path]``. Images are sorted by city, then file name.
    """

    supported_order = ("image", "mask", "info")

    def __init__(self, root, image_set, mode, *, order=None):
        super().__init__(root, order=order, supported_order=self.supported_order)
        if mode not in ("gtFine", "gtCoarse"):
            raise ValueError("Cityscapes: mode should be 'gtFine' or 'gtCoarse', got {!r}".format(mode))
        valid_sets = ("train", "val", "test") if mode == "gtFine" else ("train", "train_extra", "val")
        if image_set not in valid_sets:
            raise ValueError("Cityscapes: image_set of {} should be one of {}, got {!r}".format(
                mode, valid_sets, image_set))
        self.mode = mode
        self.images_dir = os.path.join(self.root, "leftImg8bit", image_set)
        self.masks_dir = os.path.join(self.root, mode, image_set)
        if not os.path.isdir(self.images_dir):
            raise FileNotFoundError("Cityscapes: {} is not a directory; root should hold "
                                    "leftImg8bit/ and {}/".format(self.images_dir, mode))
        self.images, self.masks = [], []
        for city in sorted(os.listdir(self.images_dir)):
            img_dir = os.path.join(self.images_dir, city)
            if not os.path.isdir(img_dir):
                continue
            for file_name in sorted(os.listdir(img_dir)):
                stem = file_name.split("_leftImg8bit")[0]
                self.images.append(os.path.join(img_dir, file_name))
                self.masks.append(os.path.join(self.masks_dir, city,
                                               "{}_{}_labelIds.png".format(stem, mode)))
        # labelId -> train id, 255 for the ignored ones
        self._label_map = np.full(256, 255, np.uint8)
        self._label_map[list(_EVAL_LABEL_IDS)] = np.arange(len(_EVAL_LABEL_IDS), dtype=np.uint8)

    def __getitem__(self, index):
        image = None
        items = []
        for key in self.order:
            if key == "image":
                image = imread(self.images[index])
                items.append(image)
            elif key == "mask":
                mask = self._label_map[imread_grayscale(self.masks[index])]
                items.append(mask[:, :, np.newaxis])
            else:  # "info"
                if image is None:
                    image = imread(self.images[index])
                items.append([image.shape[0], image.shape[1], self.images[index]])
        return tuple(items)

    def __len__(self):
        return len(self.images)

    class_names = (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    )
