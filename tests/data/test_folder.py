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
    with pytest.raises(ValueError, match="not a directory"):
        ImageFolder(str(tmp_path / "missing"))
