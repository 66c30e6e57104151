"""PascalVOC: the Pascal VOC layout, for detection (boxes from XML) or segmentation (class masks)."""
import os
import xml.etree.ElementTree as ET

import numpy as np

from .folder import imread, imread_grayscale
from .meta_vision import VisionDataset

__all__ = ["PascalVOC"]


def _voc_palette(n):
    """The first ``n`` colors of VOC's label palette as (B, G, R) rows: the bits of a class
    index are spread over the high bits of R, G and B in turn (the devkit's ``labelcolormap``)."""
    colors = np.zeros((n, 3), np.uint8)
    for label in range(n):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
            if c == 0:
                break
        colors[label] = (b, g, r)
    return colors


class PascalVOC(VisionDataset):
    r"""`Pascal VOC <http://host.robots.ox.ac.uk/pascal/VOC/>`_ (a ``VOCdevkit/VOC2012``-style
    directory).

    Args:
        root: the directory holding ``JPEGImages``, ``Annotations``, ``ImageSets`` and
            ``SegmentationClass`` (``SegmentationClass_aug`` for an ``image_set`` containing
            ``"aug"``, the SBD-augmented masks).
        image_set: the split's name: ids are read from ``ImageSets/Main/<image_set>.txt`` for
            boxes and from ``ImageSets/Segmentation/<image_set>.txt`` for masks.
        order: names of the item's fields, from ``("image", "boxes", "boxes_category", "mask",
            "info")``; boxes and masks cannot be asked together.

    Items: ``"image"`` (H, W, 3) uint8 BGR; ``"boxes"`` (N, 4) float32 ``xmin, ymin, xmax,
    ymax`` as written in the XML (VOC's 1-based pixel coordinates, unchanged); ``"boxes_category"``
    (N,) int32, 1 + the index in ``class_names``; ``"mask"`` (H, W, 1) uint8 class index, 0 for
    background and 255 for the "void" border (colors of ``SegmentationClass`` translated through
    ``class_colors``; ``_aug`` masks already hold indices); ``"info"`` ``[height, width, id]``.
    """

    supported_order = ("image", "boxes", "boxes_category", "mask", "info")

    def __init__(self, root, image_set, *, order=None):
        super().__init__(root, order=order, supported_order=self.supported_order)
        wants_boxes = "boxes" in self.order or "boxes_category" in self.order
        wants_mask = "mask" in self.order
        if wants_boxes and wants_mask:
            raise ValueError("PascalVOC gives boxes (detection) or a mask (segmentation), not both; "
                             "order={}".format(self.order))
        if not os.path.isdir(self.root):
            raise FileNotFoundError("PascalVOC: {} is not a directory; pass the VOC2007/VOC2012 "
                                    "directory that holds JPEGImages".format(self.root))
        self.image_set = image_set
        split_dir = "Segmentation" if wants_mask else "Main"
        split_file = os.path.join(self.root, "ImageSets", split_dir, image_set.rstrip("\n") + ".txt")
        if not os.path.isfile(split_file):
            raise FileNotFoundError("PascalVOC: split file {} does not exist; image_set names a file "
                                    "of ImageSets/{}".format(split_file, split_dir))
        with open(split_file, "r") as f:
            self.file_names = [line.strip() for line in f if line.strip()]
        image_dir = os.path.join(self.root, "JPEGImages")
        self.images = [os.path.join(image_dir, name + ".jpg") for name in self.file_names]
        if wants_boxes:
            ann_dir = os.path.join(self.root, "Annotations")
            self.annotations = [os.path.join(ann_dir, name + ".xml") for name in self.file_names]
        if wants_mask:
            mask_dir = os.path.join(
                self.root, "SegmentationClass_aug" if "aug" in image_set else "SegmentationClass")
            self.masks = [os.path.join(mask_dir, name + ".png") for name in self.file_names]
        self.img_infos = {}

    def __getitem__(self, index):
        image = objects = None
        items = []
        for key in self.order:
            if key == "image":
                image = imread(self.images[index])
                items.append(image)
            elif key in ("boxes", "boxes_category"):
                if objects is None:
                    objects = self._read_objects(index)
                if key == "boxes":
                    items.append(np.array([box for _, box in objects], np.float32).reshape(-1, 4))
                else:
                    items.append(np.array([self._class_index(name, index) + 1 for name, _ in objects],
                                          np.int32))
            elif key == "mask":
                if "aug" in self.image_set:
                    mask = imread_grayscale(self.masks[index])
                else:
                    mask = self._colors_to_labels(imread(self.masks[index]))
                items.append(mask[:, :, np.newaxis])
            else:  # "info"
                info = self.get_img_info(index, image)
                items.append([info["height"], info["width"], info["file_name"]])
        return tuple(items)

    def __len__(self):
        return len(self.images)

    def get_img_info(self, index, image=None):
        """``{"height", "width", "file_name"}`` of the ``index``-th image (its id as
        ``file_name``); read from the image once, then cached."""
        if index not in self.img_infos:
            if image is None:
                image = imread(self.images[index])
            self.img_infos[index] = dict(height=image.shape[0], width=image.shape[1],
                                         file_name=self.file_names[index])
        return self.img_infos[index]

    def _read_objects(self, index):
        """``[(name, (xmin, ymin, xmax, ymax)), ...]`` of the ``<object>`` entries, in file order."""
        root = ET.parse(self.annotations[index]).getroot()
        objects = []
        for obj in root.findall("object"):
            box = obj.find("bndbox")
            if box is None:
                raise ValueError("{}: an <object> has no <bndbox>".format(self.annotations[index]))
            coords = tuple(float(box.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax"))
            objects.append((obj.find("name").text.strip(), coords))
        return objects

    def _class_index(self, name, index):
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ValueError("{}: object class {!r} is not one of PascalVOC.class_names".format(
                self.annotations[index], name)) from None

    def _colors_to_labels(self, bgr):
        """An (H, W) uint8 label image from a color-coded (H, W, 3) BGR mask; colors outside
        ``class_colors`` (the cream "void" border) become 255."""
        labels = np.full(bgr.shape[:2], 255, np.uint8)
        for label, color in enumerate(self.class_colors):
            labels[np.all(bgr == np.asarray(color, np.uint8), axis=-1)] = label
        return labels

    class_names = (
        "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
        "train", "tvmonitor",
    )

    # background, then class_names' colors, as BGR triples (OpenCV's channel order)
    class_colors = [list(map(int, c)) for c in _voc_palette(len(class_names) + 1)]
