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
    with Pillow and hand the image to ``from_pillow``, which gives what OpenCV would."""
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


_16_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _high_byte(im):
    """A 16-bit gray Pillow image as OpenCV reads it into 8 bits: the high byte of each value."""
    return (np.asarray(im) >> 8).astype(np.uint8)


def _upright(im):
    """``im`` turned by its EXIF orientation, as ``cv2.imread`` turns it (OpenCV 4.14, JPEG,
    PNG and WebP files; 4.11 leaves WebP as stored)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(im)


def _rgb(im, fmt):
    """An (H, W, 3) uint8 RGB array of Pillow image ``im`` as OpenCV's decoder of format ``fmt``
    gives its colors: a palette through its colors, an alpha dropped, but a TIFF's alpha
    multiplied in (libtiff's RGBA reader, which OpenCV uses, premultiplies it), and a CMYK
    JPEG's colors by OpenCV's own conversion."""
    if fmt == "TIFF" and im.mode in ("RGBA", "LA"):
        rgba = np.asarray(im.convert("RGBA")).astype(np.int64)
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    if fmt == "JPEG" and im.mode == "CMYK":
        # OpenCV's CMYK -> BGR of the values libjpeg gives it: the file's, which Pillow
        # un-inverts where an Adobe marker says they are inverted
        cmyk = np.asarray(im).astype(np.int64)
        if "adobe" in im.info:
            cmyk = 255 - cmyk
        k = cmyk[..., 3:]
        return (k - ((255 - cmyk[..., :3]) * k >> 8)).astype(np.uint8)
    return np.asarray(im.convert("RGB"))


def _bgr_from_pillow(im):
    fmt = im.format
    im = _upright(im)
    if im.mode in _16_BIT:
        return np.repeat(_high_byte(im)[..., None], 3, axis=2)
    return _rgb(im, fmt)[..., ::-1]


def _gray_from_pillow(im):
    fmt = im.format
    if fmt == "JPEG" and im.mode != "L":
        im.draft("L", im.size)  # libjpeg's own gray output, which OpenCV asks for
    im = _upright(im)
    if im.mode == "L":
        return np.asarray(im)
    if im.mode in _16_BIT:
        return _high_byte(im)
    rgb = _rgb(im, fmt)
    # each OpenCV decoder's own weights for 0.299 R + 0.587 G + 0.114 B
    if fmt not in ("PNG", "BMP", "PPM", "TIFF", "JPEG"):  # WebP, GIF, ...: cvtColor's BGR2GRAY
        from ...transform.vision.functional import to_gray

        return to_gray(rgb[..., ::-1])[..., 0]
    r, g, b = np.moveaxis(rgb.astype(np.int64), 2, 0)
    if fmt == "PNG":  # libpng's rgb_to_gray, truncated
        gray = (9797 * r + 19234 * g + 3737 * b) >> 15
    else:  # imgcodecs' own, 14-bit (a JPEG here: CMYK)
        gray = (4899 * r + 9617 * g + 1868 * b + (1 << 13)) >> 14
    return gray.astype(np.uint8)


def imread(path: str) -> np.ndarray:
    """An (H, W, 3) uint8 BGR image, as ``cv2.imread(path, cv2.IMREAD_COLOR)`` gives upstream;
    read with OpenCV when installed, else with Pillow (turned by its EXIF orientation, 16-bit
    gray by its high byte, as OpenCV reads them)."""
    return _read(path, "IMREAD_COLOR", _bgr_from_pillow)


def imread_grayscale(path: str) -> np.ndarray:
    """An (H, W) uint8 image, as ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` gives upstream (label
    masks are stored this way); read with OpenCV when installed, else with Pillow. A single-channel
    file keeps its values; a color one is converted to luma as OpenCV's decoders do (libjpeg's
    gray output, libpng's conversion, imgcodecs' for BMP, PPM and TIFF, cvtColor's for the
    rest)."""
    return _read(path, "IMREAD_GRAYSCALE", _gray_from_pillow)


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
        if not os.path.isdir(self.root):  # (upstream: os.listdir's FileNotFoundError)
            raise FileNotFoundError(f"ImageFolder: {self.root} is not a directory; root should "
                                    "hold one directory of images per class")
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
