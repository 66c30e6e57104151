"""ImageFolder: images sorted into one sub-directory per class (root/<class>/<image>)."""
import os
from typing import Dict, List, Tuple

import numpy as np

from .meta_vision import VisionDataset

__all__ = ["ImageFolder", "is_img", "imread", "imread_grayscale"]

IMG_EXT = (".jpg", ".png", ".jpeg", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_img(filename: str) -> bool:
    """Whether ``filename`` has an image extension (case-insensitive)."""
    return filename.lower().endswith(IMG_EXT)


def _read(path, cv2_flag, from_pillow):
    """Read ``path`` with OpenCV (``cv2.imread(path, cv2_flag)``) when installed, else open it
    with Pillow and hand the image to ``from_pillow``."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        img = cv2.imread(path, getattr(cv2, cv2_flag))
        if img is None:
            raise ValueError(f"cannot read an image from {path}")
        return img
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "reading images needs OpenCV or Pillow: pip install opencv-python (or pillow)"
        ) from None
    with Image.open(path) as im:
        return np.ascontiguousarray(from_pillow(im))


def imread(path: str) -> np.ndarray:
    """An (H, W, 3) uint8 BGR image, as ``cv2.imread(path, cv2.IMREAD_COLOR)`` gives upstream;
    read with OpenCV when installed, else with Pillow."""
    return _read(path, "IMREAD_COLOR", lambda im: np.asarray(im.convert("RGB"))[..., ::-1])


def imread_grayscale(path: str) -> np.ndarray:
    """An (H, W) uint8 image, as ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` gives upstream (label
    masks are stored this way); read with OpenCV when installed, else with Pillow. A single-channel
    file keeps its values; a color one is converted to luma by both readers."""
    # a palette ("P") image is converted through its colors, as OpenCV does
    return _read(path, "IMREAD_GRAYSCALE",
                 lambda im: np.asarray(im if im.mode == "L" else im.convert("L")))


class ImageFolder(VisionDataset):
    r"""Images from ``root/<class>/.../<file>``; items are ``(image, label)`` with an
    (H, W, 3) uint8 BGR image and the class's index among the sorted class directories
    (an int32), or its directory name with ``class_name=True``.

    Args:
        root: the directory holding one sub-directory per class.
        check_valid_func: ``f(path) -> bool`` choosing the files to use; default: image
            extensions (:func:`is_img`).
        class_name: give the class directory's name instead of its index.
    """

    def __init__(self, root: str, check_valid_func=None, class_name: bool = False):
        super().__init__(root, order=("image", "image_category"))
        if not os.path.isdir(self.root):
            raise ValueError(f"ImageFolder: {self.root} is not a directory")
        self.check_valid = check_valid_func if check_valid_func is not None else is_img
        self.class_name = class_name
        self.class_dict = self.collect_class()
        self.samples = self.collect_samples()

    def collect_class(self) -> Dict:
        classes = sorted(d.name for d in os.scandir(self.root) if d.is_dir())
        return {name: np.int32(i) for i, name in enumerate(classes)}

    def collect_samples(self) -> List:
        samples = []
        for key in sorted(self.class_dict):
            for directory, _, files in sorted(os.walk(os.path.join(self.root, key),
                                                      followlinks=True)):
                for name in sorted(files):
                    path = os.path.join(directory, name)
                    if self.check_valid(path):
                        samples.append((path, key if self.class_name else self.class_dict[key]))
        return samples

    def __getitem__(self, index: int) -> Tuple:
        path, label = self.samples[index]
        return imread(path), label

    def __len__(self) -> int:
        return len(self.samples)
