"""Tests of megengine/data/transform: the numpy image functions (torch as the resize
oracle) and the vision transforms on images, boxes, keypoints and masks."""
import colorsys

import numpy as np
import pytest
import torch

import megengine.data.transform as T
from megengine.data.transform.vision import functional as F


def torch_resize(image, size, mode):
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None]).astype(np.float64))
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    y = torch.nn.functional.interpolate(x, size=size, mode=mode, **kwargs)
    return y[0].numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("src,dst", [((5, 7), (11, 3)), ((4, 4), (8, 8)), ((9, 6), (4, 5)), ((3, 8), (3, 13))])
def test_resize_linear_matches_half_pixel_oracle(src, dst):
    rng = np.random.RandomState(0)
    image = rng.rand(*src, 3).astype(np.float32)
    out = F.resize(image, dst, F.INTER_LINEAR)
    assert out.shape == (*dst, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, torch_resize(image, dst, "bilinear"), atol=1e-5)

    image8 = rng.randint(0, 256, size=(*src, 2)).astype(np.uint8)
    out8 = F.resize(image8, dst)
    assert out8.dtype == np.uint8
    assert np.abs(out8.astype(int) - np.rint(torch_resize(image8, dst, "bilinear"))).max() <= 1


def test_resize_linear_by_hand():
    row = np.array([[0.0, 10.0]], dtype=np.float32)[:, :, None]  # 1 x 2
    # 4 output pixels: src x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamped
    np.testing.assert_allclose(F.resize(row, (1, 4))[0, :, 0], [0.0, 2.5, 7.5, 10.0])


@pytest.mark.parametrize("src,dst", [((4, 6), (8, 3)), ((5, 5), (2, 9)), ((7, 3), (7, 12))])
def test_resize_nearest_matches_oracle(src, dst):
    image = np.arange(np.prod(src)).reshape(*src, 1).astype(np.int32)
    out = F.resize(image, dst, F.INTER_NEAREST)
    np.testing.assert_array_equal(out, torch_resize(image, dst, "nearest").astype(np.int32))
    assert out.dtype == np.int32


def test_resize_keeps_2d_and_rejects_unknown_interpolation():
    assert F.resize(np.zeros((4, 4), np.uint8), (2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="INTER_LANCZOS4 \\(4\\)"):
        F.resize(np.zeros((4, 4, 1)), (2, 2), 7)
    with pytest.raises(ValueError, match="height, width"):
        F.resize(np.zeros((4, 4, 1)), (2,))


def test_wrap_keepdims_gives_a_two_dimensional_result_a_channel_axis():
    # upstream 1.13 measured: a decorated function's (H, W) result for an (H, W, C) image
    # comes back as (H, W, 1)
    first = F.wrap_keepdims(lambda image: image[:, :, 0])
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    out = first(image)
    assert out.shape == (2, 4, 1)
    np.testing.assert_array_equal(out[:, :, 0], image[:, :, 0])
    # an (H, W) image (a fork extension) comes back with as many channels as the result has:
    # one as (H, W), three as they are
    gray = np.array([[10, 20], [30, 40]], np.uint8)
    assert first(gray).shape == (2, 2) and F.flip(gray, 1).tolist() == [[20, 10], [40, 30]]
    bgr = F.to_bgr(gray)
    assert bgr.shape == (2, 2, 3)
    np.testing.assert_array_equal(bgr, np.repeat(gray[:, :, None], 3, axis=2))
    with pytest.raises(ValueError, match="shape"):
        first(np.zeros((2, 2, 3, 1), np.uint8))


def test_pad_and_flip_functions():
    image = np.array([[1, 2], [3, 4]], dtype=np.uint8)[:, :, None]
    out = F.pad(image, (1, 0, 2, 1), 9)  # top, bottom, left, right
    np.testing.assert_array_equal(out[:, :, 0], [[9, 9, 9, 9, 9], [9, 9, 1, 2, 9], [9, 9, 3, 4, 9]])
    out = F.pad(image, (1, 2), 0)  # bottom, right
    assert out.shape == (3, 4, 1) and out[:2, :2, 0].tolist() == [[1, 2], [3, 4]] and out[2].sum() == 0
    color = F.pad(np.zeros((1, 1, 3), np.uint8), 1, [5, 6, 7])
    assert color[0, 0].tolist() == [5, 6, 7] and color[1, 1].tolist() == [0, 0, 0]
    assert F.pad(image, 1, 0.5).dtype == np.float32
    with pytest.raises(ValueError, match="non-negative"):
        F.pad(image, -1, 0)
    np.testing.assert_array_equal(F.flip(image, 1)[:, :, 0], [[2, 1], [4, 3]])
    np.testing.assert_array_equal(F.flip(image, 0)[:, :, 0], [[3, 4], [1, 2]])
    np.testing.assert_array_equal(F.flip(image, -1)[:, :, 0], [[4, 3], [2, 1]])
    # upstream 1.13 measured (cv2.flip's rule): any positive code flips horizontally, any
    # negative one both ways
    np.testing.assert_array_equal(F.flip(image, 2)[:, :, 0], [[2, 1], [4, 3]])
    np.testing.assert_array_equal(F.flip(image, -5)[:, :, 0], [[4, 3], [2, 1]])


def test_gray_and_hsv_against_colorsys():
    bgr = np.array([[[10, 200, 30], [255, 0, 0], [0, 0, 255], [90, 90, 90]]], dtype=np.uint8)
    gray = F.to_gray(bgr)
    assert gray.shape == (1, 4, 1)
    expected = np.rint(0.114 * bgr[..., 0] + 0.587 * bgr[..., 1] + 0.299 * bgr[..., 2])
    np.testing.assert_array_equal(gray[..., 0], expected)
    hsv = F.bgr_to_hsv(bgr)
    for (b, g, r), (h, s, v) in zip(bgr[0].tolist(), hsv[0].tolist()):
        eh, es, ev = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert abs(h - eh * 256) % 256 <= 1 and abs(s - es * 255) <= 1 and abs(v - ev * 255) <= 1
    # back: OpenCV reads the hue on 0..255, so the round trip turns blue (h = 171 of 256)
    # into 171 / 255 of the circle: green 6 where it was 0
    back = F.hsv_to_bgr(hsv).astype(int)
    for (h, s, v), (b, g, r) in zip(hsv[0].tolist(), back[0].tolist()):
        er, eg, eb = colorsys.hsv_to_rgb(h / 255 % 1.0, s / 255, v / 255)
        assert max(abs(b - eb * 255), abs(g - eg * 255), abs(r - er * 255)) <= 1


def sample():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    boxes = np.array([[1.0, 0.0, 3.0, 2.0]], dtype=np.float32)
    mask = (np.arange(24).reshape(4, 6, 1) % 5).astype(np.uint8)
    keypoints = np.array([[[1.0, 1.0, 2.0], [5.0, 3.0, 1.0]]], dtype=np.float32)
    return image, boxes, mask, keypoints, 7


ORDER = ("image", "boxes", "mask", "keypoints", "image_category")


def test_horizontal_flip_moves_all_geometry():
    image, boxes, mask, keypoints, cat = sample()
    out = T.RandomHorizontalFlip(prob=1.0, order=ORDER).apply((image, boxes, mask, keypoints, cat))
    np.testing.assert_array_equal(out[0], image[:, ::-1])
    np.testing.assert_array_equal(out[1], [[3.0, 0.0, 5.0, 2.0]])  # x -> 6 - x
    np.testing.assert_array_equal(out[2], mask[:, ::-1])
    np.testing.assert_array_equal(out[3], [[[5.0, 1.0, 2.0], [1.0, 3.0, 1.0]]])
    assert out[4] == 7
    np.testing.assert_array_equal(boxes, [[1.0, 0.0, 3.0, 2.0]])  # inputs untouched
    same = T.RandomHorizontalFlip(prob=0.0, order=ORDER).apply((image, boxes, mask, keypoints, cat))
    np.testing.assert_array_equal(same[0], image)
    np.testing.assert_array_equal(same[1], boxes)


def test_vertical_flip():
    image, boxes, mask, keypoints, cat = sample()
    out = T.RandomVerticalFlip(prob=1.0, order=ORDER).apply((image, boxes, mask, keypoints, cat))
    np.testing.assert_array_equal(out[0], image[::-1])
    np.testing.assert_array_equal(out[1], [[1.0, 2.0, 3.0, 4.0]])  # y -> 4 - y
    np.testing.assert_array_equal(out[3][0, :, 1], [3.0, 1.0])



def test_flip_subclass_reads_image_size_like_upstream():
    # MegEngine/Models' keypoints RandomHorizontalFlip subclass mirrors keypoints with self._w and
    # self._flipped, the attributes upstream's flip sets in apply; a vertical flip keeps self._h
    class KeypointFlip(T.RandomHorizontalFlip):
        def _apply_keypoints(self, keypoints):
            if self._flipped:
                keypoints = keypoints.copy()
                keypoints[:, :, 0] = self._w - keypoints[:, :, 0] - 1
            return keypoints

    image, boxes, mask, keypoints, cat = sample()
    out = KeypointFlip(prob=1.0, order=ORDER).apply((image, boxes, mask, keypoints, cat))
    np.testing.assert_array_equal(out[3][0, :, 0], 6 - 1 - keypoints[0, :, 0])
    flip = T.RandomVerticalFlip(prob=1.0, order=ORDER)
    flip.apply((image, boxes, mask, keypoints, cat))
    assert (flip._h, flip._w) == image.shape[:2]

def test_pad_transform():
    image, boxes, mask, keypoints, cat = sample()
    out = T.Pad((1, 2, 3, 4), value=[255] * 3, mask_value=9, order=ORDER).apply((image, boxes, mask, keypoints, cat))
    assert out[0].shape == (7, 13, 3) and out[0][0, 0].tolist() == [255] * 3
    # one number is OpenCV's Scalar(v) = (v, 0, 0, 0): the first channel only, as upstream's
    assert T.Pad(1, value=255).apply(image)[0, 0].tolist() == [255, 0, 0]
    np.testing.assert_array_equal(out[0][1:5, 3:9], image)
    np.testing.assert_array_equal(out[1], [[4.0, 1.0, 6.0, 3.0]])
    assert out[2].shape == (7, 13, 1) and out[2][0, 0, 0] == 9
    np.testing.assert_array_equal(out[3][0, :, :2], [[4.0, 2.0], [8.0, 4.0]])
    with pytest.raises(ValueError, match="size"):
        T.Pad((1, 2, 3))


def test_center_crop():
    image, boxes, mask, keypoints, cat = sample()
    out = T.CenterCrop((2, 4), order=ORDER).apply((image, boxes, mask, keypoints, cat))
    np.testing.assert_array_equal(out[0], image[1:3, 1:5])
    np.testing.assert_array_equal(out[1], [[0.0, -1.0, 2.0, 1.0]])
    np.testing.assert_array_equal(out[2], mask[1:3, 1:5])
    with pytest.raises(ValueError, match="bigger than the image"):
        T.CenterCrop(5).apply(image)


def test_bad_sizes_and_ranges_raise_upstreams_assertion_error_too():
    # upstream 1.13 asserts these (measured: CenterCrop's size; the others are its asserts)
    image = sample()[0]
    with pytest.raises(AssertionError, match="bigger than the image"):
        T.CenterCrop(5).apply(image)
    with pytest.raises(AssertionError, match="mode='CHW' only"):
        T.ToMode("HWC")
    with pytest.raises(AssertionError, match="scale_range"):
        T.RandomResizedCrop(3, scale_range=(0.9, 0.1))
    with pytest.raises(AssertionError, match="ratio_range"):
        T.RandomResizedCrop(3, ratio_range=(2.0, 1.0))


def test_random_crop_is_consistent_across_elements():
    image = np.arange(10 * 10).reshape(10, 10, 1).astype(np.int32)
    coords = np.array([[5.0, 5.0]])
    np.random.seed(0)
    offsets = set()
    for _ in range(20):
        out_image, out_mask, out_coords = T.RandomCrop(4, order=("image", "mask", "coords")).apply(
            (image, image.copy(), coords)
        )
        assert out_image.shape == (4, 4, 1)
        y, x = divmod(int(out_image[0, 0, 0]), 10)
        np.testing.assert_array_equal(out_image, image[y : y + 4, x : x + 4])
        np.testing.assert_array_equal(out_mask, out_image)
        np.testing.assert_array_equal(out_coords, [[5.0 - x, 5.0 - y]])
        offsets.add((x, y))
    assert len(offsets) > 5


def test_random_crop_pads_small_images():
    image = np.ones((2, 3, 3), dtype=np.uint8)
    out = T.RandomCrop((4, 5), padding_value=[7, 7, 7]).apply(image)
    assert out.shape == (4, 5, 3)
    assert (out[:2, :3] == 1).all() and (out[2:] == 7).all() and (out[:, 3:] == 7).all()
    out = T.RandomCrop(4, padding_size=1).apply(image)  # 4 x 5 after padding
    assert out.shape == (4, 4, 3)


def test_resize_transform_scales_geometry():
    image, boxes, mask, keypoints, cat = sample()
    out = T.Resize((8, 12), order=ORDER).apply((image, boxes, mask, keypoints, cat))
    np.testing.assert_allclose(out[0], np.rint(torch_resize(image, (8, 12), "bilinear")), atol=1)
    np.testing.assert_array_equal(out[1], [[2.0, 0.0, 6.0, 4.0]])
    np.testing.assert_array_equal(out[2], mask.repeat(2, axis=0).repeat(2, axis=1))  # nearest
    np.testing.assert_array_equal(out[3][0, :, :2], [[2.0, 2.0], [10.0, 6.0]])
    # an int size is the shorter edge
    assert T.Resize(8).apply(image).shape == (8, 12, 3)
    assert T.Resize(3).apply(np.zeros((10, 5, 1))).shape == (6, 3, 1)


def test_shortest_edge_and_random_resize():
    image = np.zeros((4, 10, 3), np.uint8)
    assert T.ShortestEdgeResize(8, max_size=100).apply(image).shape == (8, 20, 3)
    assert T.ShortestEdgeResize(8, max_size=16).apply(image).shape == (6, 16, 3)  # 8x20 capped
    assert T.ShortestEdgeResize((2, 3, 4), 100, sample_style="choice").apply(image).shape[0] in (2, 3, 4)
    with pytest.raises(NotImplementedError):
        T.ShortestEdgeResize(8, 16, sample_style="bogus")
    out, coords = T.RandomResize((2.0, 2.0), order=("image", "coords")).apply((image, np.array([[1.0, 3.0]])))
    assert out.shape == (8, 20, 3)
    np.testing.assert_array_equal(coords, [[2.0, 6.0]])


def test_random_resized_crop():
    image = np.random.RandomState(0).rand(6, 8, 3).astype(np.float32)
    # the whole image (area 1, its own aspect ratio) resized: equal to a plain resize
    whole = T.RandomResizedCrop((3, 4), scale_range=(1.0, 1.0), ratio_range=(8 / 6, 8 / 6))
    np.testing.assert_allclose(whole.apply(image), F.resize(image, (3, 4)), atol=1e-6)
    np.random.seed(1)
    for _ in range(10):
        out, coords = T.RandomResizedCrop(5, order=("image", "coords")).apply((image, np.array([[0.0, 0.0]])))
        assert out.shape == (5, 5, 3)
        assert (coords <= 0).all()  # the origin can only move up-left of the crop


def test_random_resized_crop_of_a_thin_image_keeps_a_pixel_and_resize_refuses_empty_images():
    # found by the fuzzer: a 1 x 10 image with ratios near 1/3 fails every try, and the central
    # fallback rounded its width 1 * 0.35 to 0; the empty window reached numpy as an IndexError
    image = np.arange(10, dtype=np.uint8).reshape(1, 10, 1)
    t = T.RandomResizedCrop(3, scale_range=(0.9, 1.0), ratio_range=(0.3, 0.35))
    np.random.seed(0)
    assert t._get_coord(image) == (4, 0, 1, 1)  # the central pixel
    np.testing.assert_array_equal(t.apply(image), np.full((3, 3, 1), 4, np.uint8))
    with pytest.raises(ValueError, match="non-empty image"):
        F.resize(np.zeros((1, 0, 3), np.uint8), (2, 2))


def test_compose_without_transforms_is_empty():
    # upstream 1.13 measured: Compose().transforms == []
    assert T.Compose().transforms == []


def test_normalize_tomode_and_compose_order():
    image = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    mask = np.ones((2, 2, 1), np.uint8)
    pipeline = T.Compose(
        [T.Normalize(mean=[1, 2, 3], std=[2, 2, 2]), T.ToMode("CHW")], order=("image", "mask", "image_category")
    )
    out_image, out_mask, label = pipeline.apply((image, mask, 3))
    expected = ((image.astype(np.float32) - [1, 2, 3]) / 2).transpose(2, 0, 1)
    assert out_image.dtype == np.float32 and out_image.shape == (3, 2, 2)
    np.testing.assert_allclose(out_image, expected)
    assert out_mask.shape == (1, 2, 2) and label == 3
    batch = pipeline.apply_batch([(image, mask, 0), (image, mask, 1)])
    assert len(batch) == 2 and batch[1][2] == 1
    # a bare image in, a bare image out
    assert T.ToMode().apply(image).shape == (3, 2, 2)


class AddOne(T.VisionTransform):
    def _apply_image(self, image):
        return image + 1


class Double(T.VisionTransform):
    def _apply_image(self, image):
        return image * 2


def test_compose_shuffle_and_batch_compose():
    np.random.seed(0)
    shuffled = T.Compose([AddOne(), Double()], shuffle_indices=[(1, 2)])
    results = {int(shuffled.apply(np.array([1]))[0]) for _ in range(30)}
    assert results == {4, 3}  # (1 + 1) * 2 and 1 * 2 + 1
    assert int(T.Compose([AddOne(), Double()]).apply(np.array([1]))[0]) == 4
    with pytest.raises(ValueError, match="batch_compose"):
        T.Compose([AddOne()], batch_compose=True, shuffle_indices=[(1,)])
    with pytest.raises(ValueError, match="1-based"):
        T.Compose([AddOne()], shuffle_indices=[(0, 1)])

    class CountBatches(T.Transform):
        calls = 0

        def apply(self, input):
            return input

        def apply_batch(self, inputs):
            CountBatches.calls += 1
            return inputs

    T.Compose([CountBatches(), CountBatches()], batch_compose=True).apply_batch([np.zeros(1)] * 3)
    assert CountBatches.calls == 2


def test_order_validation():
    with pytest.raises(NotImplementedError, match="unsupported"):
        T.Normalize(order=("image", "weird"))
    with pytest.raises(ValueError, match="order"):
        T.Normalize(order="image")
    # upstream 1.13 measured: a bare string raises NotImplementedError ("i is unsupported data
    # type") in a transform, a Compose and a VisionDataset; a non-sequence ValueError
    from megengine.data.dataset.vision.meta_vision import VisionDataset

    for make in (lambda: T.ToMode(order="image"), lambda: T.Compose([], order="image"),
                 lambda: VisionDataset("/tmp", order="image", supported_order=("image",))):
        with pytest.raises(NotImplementedError, match="the string order='image'"):
            make()
    for make in (lambda: T.ToMode(order=5),
                 lambda: VisionDataset("/tmp", order=5, supported_order=("image",))):
        with pytest.raises(ValueError, match="order=5") as info:
            make()
        assert not isinstance(info.value, NotImplementedError)
    with pytest.raises(ValueError, match="'image'"):
        T.RandomHorizontalFlip(order=("mask",)).apply(np.zeros((2, 2, 1)))


def test_order_is_the_callers_sequence():
    # upstream 1.13 measured: a transform keeps the order it was given (a list stays that list
    # object, also in the transforms of a Compose), order=None gives ('image',), and this
    # Compose maps a 10 image to a (3, 2, 3) float32 10 with the boxes unchanged
    order = ["image", "boxes"]
    compose = T.Compose([T.Normalize(mean=5, std=0.5), T.ToMode()], order=order)
    assert compose.order is order and compose.transforms[0].order is order
    assert T.Normalize().order == ("image",)
    image = np.full((2, 3, 3), 10, dtype=np.uint8)
    boxes = np.array([[0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    out_image, out_boxes = compose.apply((image, boxes))
    np.testing.assert_array_equal(out_image, np.full((3, 2, 3), 10, dtype=np.float32))
    np.testing.assert_array_equal(out_boxes, boxes)


def test_color_transforms():
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, size=(4, 5, 3)).astype(np.uint8)
    out = T.BrightnessTransform((2.0, 2.0)).apply(image)  # factor exactly 2, clipped
    np.testing.assert_array_equal(out, np.clip(image.astype(np.float32) * 2, 0, 255).astype(np.uint8))
    assert T.BrightnessTransform(0).apply(image) is image
    gray = F.to_gray(image.astype(np.float32))
    out = T.ContrastTransform((0.0, 0.0)).apply(image)  # all pixels become the mean gray level
    np.testing.assert_array_equal(out, np.full_like(image, gray.mean().astype(np.uint8)))
    out = T.SaturationTransform((0.0, 0.0)).apply(image)  # fully desaturated
    np.testing.assert_array_equal(out, np.repeat(gray, 3, axis=2).astype(np.uint8))
    out = T.ColorJitter(brightness=(2.0, 2.0)).apply(image)
    np.testing.assert_array_equal(out, np.clip(image.astype(np.float32) * 2, 0, 255).astype(np.uint8))
    with pytest.raises(ValueError, match="non-negative"):
        T.BrightnessTransform(-1)
    with pytest.raises(ValueError, match="hue"):
        T.HueTransform(0.7)


def test_color_blends_round_as_upstreams_transforms_do():
    # OpenCV's float gray level of (63, 63, 63) is 62.999996 (fma(63, 0.299, fma(63, 0.114,
    # 63 * 0.587)) in float32, 0x427bffff), so a fully desaturated uint8 pixel is 62
    pixel = np.full((1, 1, 3), 63, np.uint8)
    assert T.SaturationTransform((0.0, 0.0)).apply(pixel).tolist() == [[[62, 62, 62]]]
    # contrast 0.3 of gray levels 1 and 81 (mean 41): upstream's numpy 1.x takes
    # 41 * (1 - 0.3) in float64, 28.7 -> float32 28.700001, and 1 * 0.3 + 28.700001 = 29.000001
    # gives 29; a float32 product (28.699999) would give 28.999998, cast to 28
    image = np.array([[[1, 1, 1], [81, 81, 81]]], np.uint8)
    out = T.ContrastTransform((0.3, 0.3)).apply(image)
    assert out.tolist() == [[[29, 29, 29], [53, 53, 53]]]


def test_to_gray_of_integer_images_is_opencvs_fixed_point():
    # 0.114 * 244 + 0.587 * 47 + 0.299 * 7 = 57.498; OpenCV 4 (upstream's cv2) computes
    # (3735 * 244 + 19235 * 47 + 9798 * 7 + 2**14) >> 15 = 57; 14-bit weights (OpenCV 3) gave
    # 58. (36, 255, 0): (134460 + 4904925 + 2**14) >> 15 = 154 (0.114 * 36 + 0.587 * 255 = 153.8)
    bgr = np.array([[[244, 47, 7], [36, 255, 0]]], np.uint8)
    assert F.to_gray(bgr).tolist() == [[[57], [154]]]
    assert F.to_gray(bgr.astype(np.uint16)).tolist() == [[[57], [154]]]
    np.testing.assert_allclose(F.to_gray(bgr.astype(np.float32))[0, 0], [57.498], rtol=1e-6)


def test_hsv_conversions_are_opencvs_to_the_level():
    # found by the fuzzer (HueTransform): float64 formulas put about 3% of pixels one level
    # off OpenCV's integer BGR2HSV_FULL (upstream's HueTransform runs cv2.cvtColor).
    # Values by hand from OpenCV's tables: sdiv[v] = rint(255 * 4096 / v),
    # hdiv[diff] = rint(256 * 4096 / (6 * diff)), then (x * table + 2048) >> 12.
    bgr = np.array([[[217, 163, 130], [209, 104, 10]]], np.uint8)
    # pixel 0: v = 217 (blue), diff = 87: s = (87 * 4813 + 2048) >> 12 = 102,
    # h = ((130 - 163 + 4 * 87) * 2009 + 2048) >> 12 = 155 (float64 gave 154)
    np.testing.assert_array_equal(F.bgr_to_hsv(bgr), [[[155, 102, 217], [150, 243, 209]]])
    # the way back reads the hue on 0..255 (OpenCV 4.14): h = 101 * 6 / 255 = 2.376 (sector
    # 2, f = 0.376), s = 160 / 255, v = 170 / 255: blue = v (1 - s (1 - f)) = 0.40584 -> 103,
    # green = v -> 170, red = v (1 - s) -> 63.33 -> 63
    hsv = np.array([[[101, 160, 170]]], np.uint8)
    np.testing.assert_array_equal(F.hsv_to_bgr(hsv), [[[103, 170, 63]]])


def test_hue_of_a_bgra_image_is_that_of_its_colour_and_returns_bgr():
    # OpenCV's BGR2HSV takes 3 or 4 channels (the alpha is dropped), and upstream's
    # HueTransform of a BGRA image returns BGR (upstream 1.13 measured: (1, 7, 4) in, (1, 7, 3)
    # out); earlier versions of this fork refused 4 channels
    rng = np.random.RandomState(5)
    bgra = rng.randint(0, 256, (3, 4, 4)).astype(np.uint8)
    np.testing.assert_array_equal(F.bgr_to_hsv(bgra), F.bgr_to_hsv(bgra[..., :3]))
    np.random.seed(11)
    out = T.HueTransform(0.2).apply(bgra)
    np.random.seed(11)
    np.testing.assert_array_equal(out, T.HueTransform(0.2).apply(bgra[..., :3].copy()))
    assert out.shape == (3, 4, 3)
    with pytest.raises(ValueError, match=r"3\) BGR or .* BGRA image"):
        F.bgr_to_hsv(bgra[..., :2])


def test_hue_rotates_colors_and_keeps_grays():
    bgr = np.array([[[0, 0, 255], [255, 0, 0], [90, 90, 90]]], dtype=np.uint8)  # red, blue, gray
    out = T.HueTransform((0.25, 0.25)).apply(bgr)
    for (b, g, r), (ob, og, orr) in zip(bgr[0].tolist(), out[0].tolist()):
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        # the hue is written on a 0..256 circle, shifted by int(0.25 * 255) = 63 levels and
        # read back on a 0..255 one (OpenCV's HSV_FULL pair)
        er, eg, eb = colorsys.hsv_to_rgb(((round(h * 256) + 63) % 256) / 255 % 1.0, s, v)
        assert abs(ob - eb * 255) <= 3 and abs(og - eg * 255) <= 3 and abs(orr - er * 255) <= 3
    assert out[0, 2].tolist() == [90, 90, 90]
    assert T.HueTransform(0).apply(bgr) is bgr


def test_hue_refuses_images_without_three_or_four_channels():
    # upstream's cv2.cvtColor(BGR2HSV_FULL) refuses them too (cv2.error, "Bad number of channels")
    gray = np.zeros((4, 5, 1), np.uint8)
    with pytest.raises(ValueError, match=r"\(H, W, 4\) BGRA image, but got shape \(4, 5, 1\)"):
        T.HueTransform(0.2).apply(gray)


def test_noise_and_lighting():
    image = np.full((8, 8, 3), 100.0, dtype=np.float32)
    np.testing.assert_array_equal(T.GaussianNoise(mean=0.0, std=0.0).apply(image), image)
    np.random.seed(0)
    noisy = T.GaussianNoise(mean=0.0, std=0.01).apply(np.full((64, 64, 3), 100, dtype=np.uint8))
    assert noisy.dtype == np.uint8 and 1.5 < noisy.astype(float).std() < 3.5  # 0.01 * 255
    assert T.Lighting(0).apply(image) is image
    lit = T.Lighting(0.1).apply(image)
    shift = lit - image
    assert lit.dtype == np.float32
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0, 0], shift.shape), atol=1e-5)
    assert np.abs(shift).max() > 0


def test_lighting_draws_its_strength_in_units_of_255_as_upstream():
    # found writing the fuzzer's oracle: alpha ~ N(0, scale) moved a 0..255 image by about
    # 0.02 levels at scale 0.1; upstream's latest draws N(0, 255 * scale)
    image = np.full((2, 2, 3), 100.0, np.float32)
    np.random.seed(3)
    alpha = np.random.normal(scale=0.1 * 255, size=3)
    eigvec = np.array([[-0.5836, -0.6948, 0.4203], [-0.5808, -0.0045, -0.8140],
                       [-0.5675, 0.7192, 0.4009]])
    want = 100 + eigvec @ (alpha * np.array([0.2175, 0.0188, 0.0045]))
    np.random.seed(3)
    lit = T.Lighting(0.1).apply(image)
    np.testing.assert_allclose(lit[0, 0], want, rtol=1e-6)
    assert np.abs(lit - image).max() > 1  # a visible change


def test_torch_transform_compose_hands_pil_rgb_and_returns_bgr():
    Image = pytest.importorskip("PIL.Image")
    ImageOps = pytest.importorskip("PIL.ImageOps")
    rng = np.random.RandomState(0)
    bgr = rng.randint(0, 256, size=(6, 5, 3)).astype(np.uint8)
    seen = []

    def record(img):
        seen.append((img.mode, np.array(img)))
        return img

    t = T.TorchTransformCompose(
        [record, ImageOps.invert, lambda img: img.resize((4, 7))], order=("image", "image_category")
    )
    image, label = t.apply((bgr, 3))
    assert seen[0][0] == "RGB"
    np.testing.assert_array_equal(seen[0][1], bgr[..., ::-1])
    expected = np.array(Image.fromarray(255 - bgr[..., ::-1]).resize((4, 7)))[..., ::-1]
    assert image.dtype == np.uint8 and image.shape == (7, 4, 3) and label == 3
    np.testing.assert_array_equal(image, expected)
    batch = t.apply_batch([(bgr, 0), (bgr, 1)])
    np.testing.assert_array_equal(batch[1][0], expected)


def test_torch_transform_compose_gray_images_and_bad_input():
    ImageOps = pytest.importorskip("PIL.ImageOps")
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    out = T.TorchTransformCompose([ImageOps.mirror]).apply(gray)
    np.testing.assert_array_equal(out, gray[:, ::-1])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) BGR or \(H, W, 1\) gray.*\(3, 4, 2\)"):
        T.TorchTransformCompose([]).apply(np.zeros((3, 4, 2), np.uint8))
    with pytest.raises(TypeError, match="return PIL images.*returned Tensor"):
        T.TorchTransformCompose([lambda img: torch.from_numpy(np.array(img))]).apply(gray)
