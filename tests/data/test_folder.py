"""Tests for megengine/data/dataset/vision/folder.py: ImageFolder's classes, order and BGR images."""
import numpy as np
import pytest

from megengine.data.dataset import ImageFolder

Image = pytest.importorskip("PIL.Image")


def write_png(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 5, 3), rgb, np.uint8)).save(path)


def test_classes_sorted_samples_and_bgr(tmp_path):
    write_png(tmp_path / "dog" / "b.png", (0, 255, 0))
    write_png(tmp_path / "dog" / "sub" / "a.PNG", (0, 0, 255))
    write_png(tmp_path / "cat" / "z.png", (255, 0, 0))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = ImageFolder(str(tmp_path))
    assert ds.class_dict == {"cat": 0, "dog": 1}
    assert [(p.split("/")[-1], int(l)) for p, l in ds.samples] == [("z.png", 0), ("b.png", 1), ("a.PNG", 1)]
    image, label = ds[0]
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8 and label == 0
    assert image[0, 0].tolist() == [0, 0, 255]  # red, in BGR order as OpenCV reads it
    assert ds[2][0][0, 0].tolist() == [255, 0, 0]
    named = ImageFolder(str(tmp_path), class_name=True)
    assert [l for _, l in named.samples] == ["cat", "dog", "dog"]
    only_b = ImageFolder(str(tmp_path), check_valid_func=lambda p: p.endswith("b.png"))
    assert len(only_b) == 1
    # upstream 1.13's type (measured), as this fork's other datasets raise
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageFolder(str(tmp_path / "missing"))


def test_collect_class_and_collect_samples_are_the_points_to_override(tmp_path):
    # as upstream's, __init__ takes the classes and the samples from these two methods
    write_png(tmp_path / "b" / "1.png", (1, 2, 3))
    write_png(tmp_path / "a" / "2.png", (4, 5, 6))
    ds = ImageFolder(str(tmp_path))
    assert ds.collect_class() == {"a": 0, "b": 1}
    assert [(p.split("/")[-2:], int(l)) for p, l in ds.collect_samples()] == \
        [(["a", "2.png"], 0), (["b", "1.png"], 1)]

    class Reversed(ImageFolder):
        def collect_class(self):
            return {"a": 1, "b": 0}

        def collect_samples(self):
            return super().collect_samples()[::-1]

    mine = Reversed(str(tmp_path))
    assert [int(label) for _, label in mine.samples] == [0, 1]
    assert mine[0][0][0, 0].tolist() == [3, 2, 1] and int(mine[0][1]) == 0


def _image_files(tmp_path):
    """Files of the formats and modes datasets hold, each named by what it tests."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)  # sharp noise: rounding shows
    files = {}

    def save(name, image, **options):
        files[name] = str(tmp_path / name)
        image.save(files[name], **options)

    for orientation in range(1, 9):  # every EXIF orientation: cv2.imread turns the image
        im = Image.fromarray(rgb)
        exif = im.getexif()
        exif[0x0112] = orientation
        save(f"o{orientation}.jpg", im, exif=exif, quality=90)
    exif[0x0112] = 6
    save("o6.png", Image.fromarray(rgb), exif=exif)
    save("rgb.png", Image.fromarray(rgb))
    save("rgba.png", Image.fromarray(np.concatenate([rgb, rgb[..., :1]], axis=2)))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16))
    save("la.png", Image.fromarray(rgb[..., :2], "LA"))
    save("gray.png", Image.fromarray(rgb[..., 0]))
    save("gray.jpg", Image.fromarray(rgb[..., 0]), quality=80)
    save("bits.png", Image.fromarray(rgb[..., 0] > 128))
    save("gray16.png", Image.fromarray((rgb[..., 0].astype(np.uint16) * 257 + 100)))
    save("rgb.bmp", Image.fromarray(rgb))
    save("rgb.ppm", Image.fromarray(rgb))
    save("rgb.tif", Image.fromarray(rgb), compression="tiff_lzw")
    save("rgba.tif", Image.fromarray(np.concatenate([rgb, rgb[..., 1:2]], axis=2)))
    save("rgba.webp", Image.fromarray(np.concatenate([rgb, rgb[..., :1]], axis=2)), lossless=True)
    save("palette.gif", Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE))
    cmyk = np.concatenate([rgb, rgb[..., 2:]], axis=2)  # an Adobe CMYK JPEG, K not 0
    save("cmyk.jpg", Image.frombytes("CMYK", (64, 48), cmyk.tobytes()), quality=95)
    return files


def test_images_read_without_opencv_are_what_opencv_reads(tmp_path, monkeypatch):
    # OpenCV reads images for upstream; where it is not installed, Pillow reads them here and
    # must give the same arrays: turned by their EXIF orientation, 16-bit gray by its high
    # byte, a TIFF's alpha multiplied in (libtiff's RGBA reader), CMYK as OpenCV converts it,
    # color to gray as each decoder computes it: libjpeg (its gray output), libpng ((9797 R +
    # 19234 G + 3737 B) >> 15), imgcodecs for BMP, PPM, TIFF and CMYK JPEGs ((4899 R + 9617 G
    # + 1868 B + 2**13) >> 14), cvtColor's BGR2GRAY for WebP and GIF ((9798 R + 19235 G +
    # 3735 B + 2**14) >> 15)
    cv2 = pytest.importorskip("cv2")
    from megengine.data.dataset.vision.folder import imread, imread_grayscale

    files = _image_files(tmp_path)
    want = {name: (cv2.imread(path, cv2.IMREAD_COLOR), cv2.imread(path, cv2.IMREAD_GRAYSCALE))
            for name, path in files.items()}
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)  # Pillow's path from here
    for name, path in files.items():
        color, gray = imread(path), imread_grayscale(path)
        assert color.dtype == gray.dtype == np.uint8, name
        np.testing.assert_array_equal(color, want[name][0], err_msg=name)
        np.testing.assert_array_equal(gray, want[name][1], err_msg=name)
