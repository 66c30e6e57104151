"""Tests for megengine/data/dataset/vision/cityscapes.py: image/mask pairing and labelId -> train id."""
import numpy as np
import pytest

from megengine.data.dataset import Cityscapes

Image = pytest.importorskip("PIL.Image")


@pytest.fixture
def city_dir(tmp_path):
    frames = {"bonn": ["bonn_000000_000019"], "aachen": ["aachen_000001_000019", "aachen_000000_000019"]}
    for i, (city, stems) in enumerate(frames.items()):
        (tmp_path / "leftImg8bit/val" / city).mkdir(parents=True)
        (tmp_path / "gtFine/val" / city).mkdir(parents=True)
        for j, stem in enumerate(stems):
            Image.fromarray(np.full((3, 5, 3), 10 * i + j, np.uint8)).save(
                tmp_path / "leftImg8bit/val" / city / f"{stem}_leftImg8bit.png")
            # labelIds 7 (road), 26 (car), 33 (bicycle), 0 (unlabeled), 4 (static: ignored)
            ids = np.array([[7, 26, 33, 0, 4]] * 3, np.uint8)
            ids[0, 0] = 11 + i * 10 + j  # building (11) in the first frame, others elsewhere
            Image.fromarray(ids).save(tmp_path / "gtFine/val" / city / f"{stem}_gtFine_labelIds.png")
    return tmp_path


def test_items(city_dir):
    ds = Cityscapes(str(city_dir), "val", "gtFine", order=("image", "mask", "info"))
    assert len(ds) == 3
    # sorted by city, then file name
    names = [p.split("/")[-1] for p in ds.images]
    assert names == ["aachen_000000_000019_leftImg8bit.png", "aachen_000001_000019_leftImg8bit.png",
                     "bonn_000000_000019_leftImg8bit.png"]
    assert ds.masks[0].endswith("gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png")
    image, mask, info = ds[0]
    assert image.shape == (3, 5, 3) and image.dtype == np.uint8 and image[0, 0, 0] == 11
    assert mask.shape == (3, 5, 1) and mask.dtype == np.uint8
    # road -> 0, car -> 13, bicycle -> 18, unlabeled and static -> 255
    assert mask[1, :, 0].tolist() == [0, 13, 18, 255, 255]
    assert info == [3, 5, ds.images[0]]


def test_first_pixel_label_map(city_dir):
    ds = Cityscapes(str(city_dir), "val", "gtFine", order=("mask",))
    # first pixel's labelId is 11 + 10 * city + position in the fixture's list: sorted order
    # aachen_000000 (22: terrain, 9), aachen_000001 (21: vegetation, 8), bonn (11: building, 2)
    assert [int(ds[i][0][0, 0, 0]) for i in range(3)] == [9, 8, 2]


def test_info_alone_and_errors(city_dir):
    assert Cityscapes(str(city_dir), "val", "gtFine", order=("info",))[2][0][:2] == [3, 5]
    with pytest.raises(ValueError, match="mode"):
        Cityscapes(str(city_dir), "val", "gtMedium", order=("image",))
    with pytest.raises(ValueError, match="image_set"):
        Cityscapes(str(city_dir), "train_extra", "gtFine", order=("image",))
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        Cityscapes(str(city_dir), "train", "gtFine", order=("image",))
