"""Vision transforms: geometric and colour augmentations of an image and of the boxes,
keypoints and masks that belong to it."""
import collections.abc
import math
from typing import Sequence, Tuple

import numpy as np

from ....core.ops import ArgumentError  # (a ValueError, and the AssertionError upstream raises)
from ...dataset.vision.meta_vision import OrderError
from ..meta_transform import Transform
from . import functional as F

__all__ = [
    "VisionTransform",
    "ToMode",
    "Compose",
    "TorchTransformCompose",
    "Pad",
    "Resize",
    "ShortestEdgeResize",
    "RandomResize",
    "RandomCrop",
    "RandomResizedCrop",
    "CenterCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "Normalize",
    "GaussianNoise",
    "BrightnessTransform",
    "SaturationTransform",
    "ContrastTransform",
    "HueTransform",
    "ColorJitter",
    "Lighting",
]


class VisionTransform(Transform):
    r"""Base class of vision transforms.

    A sample is a tuple whose elements are named by ``order``; each element goes
    through the ``_apply_<name>`` method of the transform. Names:

    * ``"image"``: (H, W, C) array.
    * ``"coords"``: (N, 2) array of (x, y) points.
    * ``"boxes"``: (N, 4) array of boxes, "xyxy" (top left, bottom right).
    * ``"mask"``: (H, W, 1) segmentation map (moved like the image, never interpolated).
    * ``"keypoints"``: (N, K, 3) array: (x, y, label) of K keypoints of N instances.
    * ``"polygons"``: per instance, a sequence of (M, 2) arrays.
    * names ending in ``"category"`` or ``"info"`` (e.g. ``"image_category"``): passed through.

    Sample elements past ``len(order)`` are passed through too. Subclasses override
    ``_apply_image`` and the ``_apply_*`` methods of the types they change; a transform
    whose geometry depends on the image (crop, flip, resize) computes it in :meth:`apply`.

    Args:
        order: names of the sample's elements. Default: ``("image",)``
    """

    def __init__(self, order=None):
        super().__init__()
        if order is None:
            order = ("image",)
        elif isinstance(order, str):
            raise OrderError(
                "order should be a sequence of names such as ('image', 'image_category'), "
                "but got the string order={!r}".format(order)
            )
        elif not isinstance(order, collections.abc.Sequence):
            raise ValueError(
                "order should be a sequence of names such as ('image', 'image_category'), "
                "but got order={!r}".format(order)
            )
        for key in order:
            if key == "batch":
                raise ValueError("{!r} is not a valid name in order".format(key))
            if key.endswith("category") or key.endswith("info"):
                continue
            if self._get_apply(key) is None:
                raise NotImplementedError(
                    "{!r} is an unsupported data type for {}; supported: image, coords, boxes, "
                    "mask, keypoints, polygons, *category, *info".format(key, type(self).__name__)
                )
        self.order = order  # the caller's sequence itself, as upstream keeps it

    def apply_batch(self, inputs: Sequence[Tuple]):
        r"""Apply the transform to every sample of a batch."""
        return tuple(self.apply(input) for input in inputs)

    def apply(self, input: Tuple):
        r"""Apply the transform to one sample (a tuple ordered as ``order``, or a bare image)."""
        if not isinstance(input, tuple):
            input = (input,)
        output = []
        for key, item in zip(self.order, input):
            apply_func = self._get_apply(key)
            output.append(item if apply_func is None else apply_func(item))
        output.extend(input[len(self.order) :])
        return output[0] if len(output) == 1 else tuple(output)

    def _get_apply(self, key):
        return getattr(self, "_apply_{}".format(key), None)

    def _get_image(self, input: Tuple):
        if not isinstance(input, tuple):
            input = (input,)
        if "image" not in self.order:
            raise ValueError(
                "{} needs an 'image' entry in order to know the geometry, but order={}".format(
                    type(self).__name__, self.order
                )
            )
        return input[self.order.index("image")]

    def _apply_image(self, image):
        raise NotImplementedError

    def _apply_coords(self, coords):
        raise NotImplementedError

    def _apply_boxes(self, boxes):
        # transform the four corners, then take the bounding box of the result
        corners = np.asarray(boxes).reshape(-1, 4)[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)
        corners = self._apply_coords(corners).reshape(-1, 4, 2)
        return np.concatenate((corners.min(axis=1), corners.max(axis=1)), axis=1)

    def _apply_mask(self, mask):
        raise NotImplementedError

    def _apply_keypoints(self, keypoints):
        keypoints = np.asarray(keypoints)
        if len(keypoints) == 0:
            return keypoints.copy()
        coords, visibility = keypoints[..., :2], keypoints[..., 2:]
        trans_coords = np.stack([self._apply_coords(p) for p in coords])
        return np.concatenate((trans_coords, visibility), axis=-1)

    def _apply_polygons(self, polygons):
        return [[self._apply_coords(p) for p in instance] for instance in polygons]


class _ColorTransform(VisionTransform):
    """A transform of pixel values only: geometry (coords, boxes, masks) is unchanged."""

    def _apply_coords(self, coords):
        return coords

    def _apply_mask(self, mask):
        return mask


class ToMode(VisionTransform):
    r"""Change the image layout from HWC to ``mode`` (only ``"CHW"``), as networks expect.

    Args:
        mode: output layout. Default: ``"CHW"``
    """

    def __init__(self, mode="CHW", *, order=None):
        super().__init__(order)
        if mode != "CHW":
            raise ArgumentError("ToMode supports mode='CHW' only, got mode={!r}".format(mode))
        self.mode = mode

    def _apply_image(self, image):
        return np.ascontiguousarray(np.moveaxis(image, 2, 0))

    def _apply_coords(self, coords):
        return coords

    def _apply_mask(self, mask):
        return np.ascontiguousarray(np.moveaxis(mask, 2, 0))


class Compose(VisionTransform):
    r"""Apply several transforms one after another.

    Args:
        transforms: the transforms, applied in order; they take this Compose's ``order``.
        batch_compose: apply each transform to the whole batch (``apply_batch``) before
            the next one, instead of running all of them sample by sample.
        shuffle_indices: groups of 1-based positions in ``transforms`` whose order is
            shuffled at every sample, e.g. ``[(1, 3), (2, 4)]``.
    """

    def __init__(self, transforms=(), batch_compose=False, shuffle_indices=None, *, order=None):
        super().__init__(order)
        self.transforms = list(transforms or [])
        self._set_order()
        if batch_compose and shuffle_indices is not None:
            raise ValueError("Compose cannot shuffle transforms (shuffle_indices) when batch_compose=True")
        self.batch_compose = batch_compose
        if shuffle_indices is not None:
            n = len(self.transforms)
            for group in shuffle_indices:
                if any(not 1 <= i <= n for i in group):
                    raise ValueError(
                        "shuffle_indices are 1-based positions in transforms (1..{}), got {!r}".format(
                            n, shuffle_indices
                        )
                    )
            shuffle_indices = [tuple(i - 1 for i in group) for group in shuffle_indices]
        self.shuffle_indices = shuffle_indices

    def _set_order(self):
        for t in self.transforms:
            t.order = self.order
            if isinstance(t, Compose):
                t._set_order()

    def apply_batch(self, inputs: Sequence[Tuple]):
        if self.batch_compose:
            for t in self.transforms:
                inputs = t.apply_batch(inputs)
            return inputs
        return super().apply_batch(inputs)

    def apply(self, input: Tuple):
        for t in self._shuffle():
            input = t.apply(input)
        return input

    def _shuffle(self):
        if self.shuffle_indices is None:
            return self.transforms
        source = list(range(len(self.transforms)))
        for group in self.shuffle_indices:
            for dst, src in zip(group, np.random.permutation(group).tolist()):
                source[dst] = src
        return [self.transforms[i] for i in source]


class TorchTransformCompose(VisionTransform):
    r"""Apply torchvision-style transforms (callables taking and returning a PIL image) to the
    image, as upstream does for its users' PIL augmentations (AutoAugment, RandAugment, ...).

    An (H, W, 3) BGR image reaches the transforms as an RGB ``PIL.Image`` and comes back as a
    uint8 BGR array; an (H, W, 1) image as a gray (``"L"``) one. Only the image changes, and the
    transforms must return PIL images (or arrays): torchvision's ``ToTensor`` and ``Normalize``
    are not supported. Needs Pillow.

    Args:
        transforms: the callables, applied in order.
    """

    def __init__(self, transforms, *, order=None):
        super().__init__(order)
        self.transforms = list(transforms)

    def _apply_image(self, image):
        try:
            from PIL import Image
        except ImportError:
            raise ImportError("TorchTransformCompose needs Pillow: pip install pillow") from None
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] not in (1, 3):
            raise ValueError(
                "TorchTransformCompose takes an (H, W, 3) BGR or (H, W, 1) gray image, "
                "but got an image of shape {}".format(image.shape)
            )
        pixels = image[..., 0] if image.shape[2] == 1 else image[..., ::-1]  # BGR -> RGB
        result = Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8))
        for t in self.transforms:
            result = t(result)
        if not isinstance(result, (Image.Image, np.ndarray)):
            raise TypeError(
                "TorchTransformCompose needs transforms that return PIL images, but {!r} "
                "returned {}".format(t, type(result).__name__)
            )
        result = np.array(result, dtype=np.uint8)
        if result.ndim == 2:
            return result[..., np.newaxis]
        if result.shape[2] == 3:
            result = result[..., ::-1]  # RGB -> BGR
        return np.ascontiguousarray(result)


class Pad(VisionTransform):
    r"""Pad the image (and mask) with a constant border; coordinates move with it.

    Args:
        size: an int (all sides), ``(bottom, right)`` or ``(top, bottom, left, right)``.
        value: image border value, a number or one per channel; a float casts to float32.
        mask_value: mask border value (an int).
    """

    def __init__(self, size=0, value=0, mask_value=0, *, order=None):
        super().__init__(order)
        self.size = F._pad_sizes(size)
        self.value = value
        if not isinstance(mask_value, (int, np.integer)):
            raise ValueError("mask_value should be an integer, but got mask_value={!r}".format(mask_value))
        self.mask_value = mask_value

    def _apply_image(self, image):
        return F.pad(image, self.size, self.value)

    def _apply_coords(self, coords):
        coords = np.array(coords)
        coords[:, 0] += self.size[2]
        coords[:, 1] += self.size[0]
        return coords

    def _apply_mask(self, mask):
        return F.pad(mask, self.size, self.mask_value)


class _ResizeBase(VisionTransform):
    """Resize image, coords and mask to the (th, tw) chosen by ``_get_shape`` for each sample."""

    def __init__(self, interpolation=F.INTER_LINEAR, *, order=None):
        super().__init__(order)
        self.interpolation = interpolation

    def apply(self, input: Tuple):
        self._shape_info = self._get_shape(self._get_image(input))
        return super().apply(input)

    def _get_shape(self, image):
        raise NotImplementedError

    def _apply_image(self, image):
        h, w, th, tw = self._shape_info
        if h == th and w == tw:
            return image
        return F.resize(image, (th, tw), self.interpolation)

    def _apply_coords(self, coords):
        h, w, th, tw = self._shape_info
        coords = np.array(coords)
        if h == th and w == tw:
            return coords
        coords[:, 0] = coords[:, 0] * (tw / w)
        coords[:, 1] = coords[:, 1] * (th / h)
        return coords

    def _apply_mask(self, mask):
        h, w, th, tw = self._shape_info
        if h == th and w == tw:
            return mask
        return F.resize(mask, (th, tw), F.INTER_NEAREST)


class Resize(_ResizeBase):
    r"""Resize the image to ``output_size``.

    Args:
        output_size: ``(height, width)``, or an int: the shorter edge becomes this long
            and the aspect ratio is kept.
        interpolation: an OpenCV code as ``vision.functional.resize`` takes (``INTER_NEAREST``,
            ``INTER_LINEAR`` (default), ``INTER_CUBIC``, ``INTER_AREA``, ``INTER_LANCZOS4``,
            ``INTER_LINEAR_EXACT``, ``INTER_NEAREST_EXACT``) or a sequence of them to draw from;
            masks always use ``INTER_NEAREST``.
    """

    def __init__(self, output_size, interpolation=F.INTER_LINEAR, *, order=None):
        super().__init__(interpolation, order=order)
        self.output_size = output_size

    def _get_shape(self, image):
        h, w = image.shape[:2]
        size = self.output_size
        if isinstance(size, (int, np.integer)):
            if min(h, w) == size:
                return h, w, h, w
            if h < w:
                return h, w, int(size), int(size * w / h)
            return h, w, int(size * h / w), int(size)
        return (h, w, int(size[0]), int(size[1]))


class ShortestEdgeResize(_ResizeBase):
    r"""Resize so that the shorter edge gets a random length from ``min_size``, the
    longer edge being capped at ``max_size``; the aspect ratio is kept.

    Args:
        min_size: an int, or ``(low, high)`` for ``sample_style="range"`` (any int in
            ``[low, high]``), or a sequence of lengths for ``sample_style="choice"``.
        max_size: upper bound of the longer edge.
        sample_style: ``"range"`` or ``"choice"``.
        interpolation: as :class:`Resize`.
    """

    def __init__(self, min_size, max_size, sample_style="range", interpolation=F.INTER_LINEAR, *, order=None):
        super().__init__(interpolation, order=order)
        if sample_style not in ("range", "choice"):
            raise NotImplementedError("sample_style should be 'range' or 'choice', got {!r}".format(sample_style))
        self.sample_style = sample_style
        if isinstance(min_size, (int, np.integer)):
            min_size = (min_size, min_size)
        self.min_size = min_size
        self.max_size = max_size

    def _get_shape(self, image):
        h, w = image.shape[:2]
        if self.sample_style == "range":
            size = np.random.randint(self.min_size[0], self.min_size[1] + 1)
        else:
            size = np.random.choice(self.min_size)
        scale = size / min(h, w)
        th, tw = (size, scale * w) if h < w else (scale * h, size)
        if max(th, tw) > self.max_size:
            shrink = self.max_size / max(th, tw)
            th, tw = th * shrink, tw * shrink
        return h, w, int(round(th)), int(round(tw))


class RandomResize(_ResizeBase):
    r"""Resize by a random factor drawn uniformly from ``scale_range``.

    Args:
        scale_range: ``(low, high)`` factors.
        interpolation: as :class:`Resize`.
    """

    def __init__(self, scale_range, interpolation=F.INTER_LINEAR, *, order=None):
        super().__init__(interpolation, order=order)
        self.scale_range = scale_range

    def _get_shape(self, image):
        h, w = image.shape[:2]
        scale = np.random.uniform(*self.scale_range)
        return h, w, int(round(h * scale)), int(round(w * scale))


class RandomCrop(VisionTransform):
    r"""Pad by ``padding_size``, then crop a random ``output_size`` window. If the padded
    image is still smaller than the window, it is padded at the bottom/right to fit.

    Args:
        output_size: ``(height, width)`` or an int for a square.
        padding_size: as ``size`` of :class:`Pad`.
        padding_value: image padding value, as ``value`` of :class:`Pad`.
        padding_maskvalue: mask value of the padding that grows the image to ``output_size``;
            the ``padding_size`` border of the mask is 0, as upstream's (its inner Pad takes
            no mask value).
    """

    def __init__(self, output_size, padding_size=0, padding_value=(0, 0, 0), padding_maskvalue=0, *, order=None):
        super().__init__(order)
        if isinstance(output_size, (int, np.integer)):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)
        self.pad = Pad(padding_size, padding_value, order=self.order)
        self.padding_value = padding_value
        self.padding_maskvalue = padding_maskvalue

    def apply(self, input):
        self.pad.order = self.order
        input = self.pad.apply(input)
        self._h, self._w = self._get_image(input).shape[:2]
        self._th, self._tw = self.output_size
        self._x = np.random.randint(0, max(0, self._w - self._tw) + 1)
        self._y = np.random.randint(0, max(0, self._h - self._th) + 1)
        return super().apply(input)

    def _crop(self, image, value):
        if self._th > self._h or self._tw > self._w:
            image = F.pad(image, (max(0, self._th - self._h), max(0, self._tw - self._w)), value)
        return image[self._y : self._y + self._th, self._x : self._x + self._tw]

    def _apply_image(self, image):
        return self._crop(image, self.padding_value)

    def _apply_coords(self, coords):
        coords = np.array(coords)
        coords[:, 0] -= self._x
        coords[:, 1] -= self._y
        return coords

    def _apply_mask(self, mask):
        return self._crop(mask, self.padding_maskvalue)


class RandomResizedCrop(VisionTransform):
    r"""Crop a window of random area (a fraction of the image drawn from ``scale_range``)
    and random aspect ratio (from ``ratio_range``, log-uniform), then resize it to
    ``output_size``. After 10 failed draws, a central crop is used.

    Args:
        output_size: ``(height, width)`` or an int.
        scale_range: area fraction range. Default: (0.08, 1.0)
        ratio_range: width/height range. Default: (3/4, 4/3)
        interpolation: as :class:`Resize`.
    """

    def __init__(
        self,
        output_size,
        scale_range=(0.08, 1.0),
        ratio_range=(3.0 / 4, 4.0 / 3),
        interpolation=F.INTER_LINEAR,
        *,
        order=None
    ):
        super().__init__(order)
        if isinstance(output_size, (int, np.integer)):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)
        if scale_range[0] > scale_range[1]:
            raise ArgumentError("scale_range should be (min, max), got {!r}".format(scale_range))
        if ratio_range[0] > ratio_range[1]:
            raise ArgumentError("ratio_range should be (min, max), got {!r}".format(ratio_range))
        self.scale_range = scale_range
        self.ratio_range = ratio_range
        self.interpolation = interpolation

    def apply(self, input: Tuple):
        self._coord_info = self._get_coord(self._get_image(input))
        return super().apply(input)

    def _apply_image(self, image):
        x, y, w, h = self._coord_info
        return F.resize(image[y : y + h, x : x + w], self.output_size, self.interpolation)

    def _apply_coords(self, coords):
        x, y, w, h = self._coord_info
        coords = np.array(coords)
        coords[:, 0] = (coords[:, 0] - x) * self.output_size[1] / w
        coords[:, 1] = (coords[:, 1] - y) * self.output_size[0] / h
        return coords

    def _apply_mask(self, mask):
        x, y, w, h = self._coord_info
        return F.resize(mask[y : y + h, x : x + w], self.output_size, F.INTER_NEAREST)

    def _get_coord(self, image, attempts=10):
        height, width = image.shape[:2]
        area = height * width
        log_ratio = tuple(math.log(r) for r in self.ratio_range)
        for _ in range(attempts):
            target_area = np.random.uniform(*self.scale_range) * area
            aspect_ratio = math.exp(np.random.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                x = np.random.randint(0, width - w + 1)
                y = np.random.randint(0, height - h + 1)
                return x, y, w, h
        in_ratio = width / height  # fall back to a central crop
        if in_ratio < min(self.ratio_range):
            w, h = width, int(round(width / min(self.ratio_range)))
        elif in_ratio > max(self.ratio_range):
            w, h = int(round(height * max(self.ratio_range))), height
        else:
            w, h = width, height
        # at least one pixel: a thin image (1 x 3 with ratios near 0.4) would round to an empty
        # window, which upstream hands to cv2.resize and fails on
        w, h = max(w, 1), max(h, 1)
        return (width - w) // 2, (height - h) // 2, w, h


class CenterCrop(VisionTransform):
    r"""Crop the central ``output_size`` window.

    Args:
        output_size: ``(height, width)`` or an int; must not exceed the image.
    """

    def __init__(self, output_size, *, order=None):
        super().__init__(order)
        if isinstance(output_size, (int, np.integer)):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)

    def apply(self, input: Tuple):
        self._coord_info = self._get_coord(self._get_image(input))
        return super().apply(input)

    def _apply_image(self, image):
        x, y = self._coord_info
        th, tw = self.output_size
        return image[y : y + th, x : x + tw]

    def _apply_coords(self, coords):
        x, y = self._coord_info
        coords = np.array(coords)
        coords[:, 0] -= x
        coords[:, 1] -= y
        return coords

    _apply_mask = _apply_image

    def _get_coord(self, image):
        th, tw = self.output_size
        h, w = image.shape[:2]
        if th > h or tw > w:
            raise ArgumentError(
                "CenterCrop output size {} is bigger than the image ({}, {}); pad or resize "
                "the image first".format(self.output_size, h, w)
            )
        return int(round((w - tw) / 2.0)), int(round((h - th) / 2.0))


class _RandomFlip(VisionTransform):
    """Flip with probability ``prob`` along one image axis (cv2's flip code), coordinates too."""

    _flip_code = None  # 1: left-right (x against the width), 0: top-bottom (y against the height)

    def __init__(self, prob: float = 0.5, *, order=None):
        super().__init__(order)
        self.prob = prob

    def apply(self, input: Tuple):
        self._flipped = np.random.random() < self.prob
        # upstream's flips keep the image size as _w (horizontal) / _h (vertical), and programs that subclass
        # them read it (MegEngine/Models' keypoints flip mirrors its keypoints with self._w)
        self._h, self._w = self._get_image(input).shape[:2]
        self._extent = (self._h, self._w)[self._flip_code]  # HWC: width is dim 1
        return super().apply(input)

    def _apply_image(self, image):
        return F.flip(image, flipCode=self._flip_code) if self._flipped else image

    def _apply_coords(self, coords):
        coords = np.array(coords)
        if self._flipped:
            column = 1 - self._flip_code  # x is column 0, y column 1
            coords[:, column] = self._extent - coords[:, column]
        return coords

    _apply_mask = _apply_image


class RandomHorizontalFlip(_RandomFlip):
    r"""Flip left-right with probability ``prob``; x becomes ``width - x``.

    Args:
        prob: probability of flipping. Default: 0.5
    """

    _flip_code = 1


class RandomVerticalFlip(_RandomFlip):
    r"""Flip top-bottom with probability ``prob``; y becomes ``height - y``.

    Args:
        prob: probability of flipping. Default: 0.5
    """

    _flip_code = 0


class Normalize(_ColorTransform):
    r"""``(image - mean) / std`` per channel, with ``mean`` and ``std`` held as float32 arrays:
    the result's dtype is numpy's promotion of the image's with float32, as upstream's (float32
    for uint8, 16-bit and float32 images; float64 for float64, int32 and int64 ones).

    Args:
        mean: a number or one per channel. Default: 0.0
        std: a number or one per channel. Default: 1.0
    """

    def __init__(self, mean=0.0, std=1.0, *, order=None):
        super().__init__(order)
        self.mean = np.array(mean, dtype=np.float32)
        self.std = np.array(std, dtype=np.float32)

    def _apply_image(self, image):
        return (image - self.mean) / self.std


class GaussianNoise(_ColorTransform):
    r"""Add noise ``N(mean, std) * 255`` and clip to [0, 255], keeping the dtype.

    Args:
        mean: noise mean (in units of 255). Default: 0.0
        std: noise standard deviation (in units of 255). Default: 1.0
    """

    def __init__(self, mean=0.0, std=1.0, *, order=None):
        super().__init__(order)
        self.mean = np.array(mean, dtype=np.float32)
        self.std = np.array(std, dtype=np.float32)

    def _apply_image(self, image):
        noise = np.random.normal(self.mean, self.std, image.shape) * 255
        return np.clip(image + noise.astype(np.float32), 0, 255).astype(image.dtype)


def _factor_range(name, value):
    """A jitter strength as the range of the random factor: v -> [max(0, 1 - v), 1 + v]."""
    if isinstance(value, collections.abc.Sequence):
        low, high = value
        if not 0 <= low <= high:
            raise ValueError("{} range should be (min, max) with 0 <= min <= max, got {!r}".format(name, value))
        return float(low), float(high)
    if value < 0:
        raise ValueError("{} value should be non-negative, got {!r}".format(name, value))
    return max(0.0, 1.0 - value), 1.0 + value


class _BlendTransform(_ColorTransform):
    """Blend the image with a degenerate version of it by a random factor."""

    name = ""

    def __init__(self, value, *, order=None):
        super().__init__(order)
        self.value = value
        self._range = _factor_range(self.name, value)

    def _degenerate(self, image):
        raise NotImplementedError

    def _apply_image(self, image):
        if self._range == (1.0, 1.0):
            return image
        dtype = image.dtype
        image = image.astype(np.float32)
        alpha = np.random.uniform(*self._range)
        image = image * alpha + self._degenerate(image) * (1 - alpha)
        return image.clip(0, 255).astype(dtype)


class BrightnessTransform(_BlendTransform):
    r"""Scale the image by a random factor in ``[max(0, 1 - value), 1 + value]``.

    Args:
        value: non-negative strength (0 leaves the image as is), or a ``(min, max)`` factor range.
    """

    name = "brightness"

    def _degenerate(self, image):
        return 0.0


class ContrastTransform(_BlendTransform):
    r"""Blend the image with its mean gray level by a random factor in
    ``[max(0, 1 - value), 1 + value]``.

    Args:
        value: non-negative strength (0 leaves the image as is), or a ``(min, max)`` factor range.
    """

    name = "contrast"

    def _degenerate(self, image):
        # a Python float: upstream's numpy 1.x scaled this float32 mean by (1 - alpha) in
        # float64 and rounded the product to float32 once; numpy 2 would keep the product a
        # float32 scalar (a level apart now and then after the cast back to uint8)
        return float(F.to_gray(image).mean())


class SaturationTransform(_BlendTransform):
    r"""Blend the image with its gray version by a random factor in
    ``[max(0, 1 - value), 1 + value]``.

    Args:
        value: non-negative strength (0 leaves the image as is), or a ``(min, max)`` factor range.
    """

    name = "saturation"

    def _degenerate(self, image):
        return F.to_gray(image)


class HueTransform(_ColorTransform):
    r"""Rotate the hue of a BGR image by a random fraction of the colour circle drawn
    from ``[-value, value]``.

    Args:
        value: in [0, 0.5] (0 leaves the image as is), or a ``(min, max)`` range within [-0.5, 0.5].
    """

    def __init__(self, value, *, order=None):
        super().__init__(order)
        if isinstance(value, collections.abc.Sequence):
            low, high = value
        else:
            low, high = -value, value
        if not -0.5 <= low <= high <= 0.5:
            raise ValueError("hue value should be in [0.0, 0.5] (or a range in [-0.5, 0.5]), got {!r}".format(value))
        self.value = value
        self._range = (float(low), float(high))

    def _apply_image(self, image):
        if self._range == (0.0, 0.0):
            return image
        dtype = image.dtype
        hsv = F.bgr_to_hsv(image.astype(np.uint8))
        alpha = np.random.uniform(*self._range)
        # uint8 arithmetic wraps around the colour circle
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(np.int64(alpha * 255))) % 256
        return F.hsv_to_bgr(hsv).astype(dtype)


class ColorJitter(VisionTransform):
    r"""Random brightness, contrast, saturation and hue changes, applied in random order.

    Args:
        brightness: strength or ``(min, max)`` factor range, as :class:`BrightnessTransform`.
        contrast: as :class:`ContrastTransform`.
        saturation: as :class:`SaturationTransform`.
        hue: as :class:`HueTransform`.
    """

    def __init__(self, brightness=0, contrast=0, saturation=0, hue=0, *, order=None):
        super().__init__(order)
        transforms = []
        if brightness != 0:
            transforms.append(BrightnessTransform(brightness))
        if contrast != 0:
            transforms.append(ContrastTransform(contrast))
        if saturation != 0:
            transforms.append(SaturationTransform(saturation))
        if hue != 0:
            transforms.append(HueTransform(hue))
        self.transforms = Compose(
            transforms,
            shuffle_indices=[tuple(range(1, len(transforms) + 1))] if transforms else None,
            order=self.order,
        )

    def apply(self, input):
        if self.transforms.order != self.order:  # an enclosing Compose changed our order
            self.transforms.order = self.order
            self.transforms._set_order()
        return self.transforms.apply(input)


class Lighting(_ColorTransform):
    r"""AlexNet-style PCA lighting noise: add ``eigvec @ (alpha * eigval)`` with
    ``alpha ~ N(0, 255 * scale)`` per sample, for BGR images in [0, 255].

    Args:
        scale: standard deviation of ``alpha``; 0 leaves the image as is.
    """

    def __init__(self, scale, *, order=None):
        super().__init__(order)
        if scale < 0:
            raise ValueError("lighting scale should be non-negative, got {!r}".format(scale))
        self.scale = scale
        # ImageNet RGB eigenvectors with the channel axis reversed for BGR
        self.eigvec = np.array(
            [[-0.5836, -0.6948, 0.4203], [-0.5808, -0.0045, -0.8140], [-0.5675, 0.7192, 0.4009]]
        )
        self.eigval = np.array([0.2175, 0.0188, 0.0045])

    def _apply_image(self, image):
        if self.scale == 0:
            return image
        dtype = image.dtype
        # in units of 255, as GaussianNoise's std (upstream's latest; its 1.0-era N(0, scale)
        # moved a 0..255 image by a hundredth of a level at scale 0.1: no visible change)
        alpha = np.random.normal(scale=self.scale * 255, size=3)
        image = image.astype(np.float32) + self.eigvec.dot(alpha * self.eigval)
        return image.clip(0, 255).astype(dtype)
