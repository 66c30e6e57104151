"""Tests for megengine/data/dataset/vision/voc.py: PascalVOC boxes from XML and masks from colors, against a hand-made fixture."""
import numpy as np
import pytest

from megengine.data.dataset import PascalVOC

Image = pytest.importorskip("PIL.Image")

XML = """<annotation>
  <filename>{name}.jpg</filename>
  <size><width>6</width><height>4</height><depth>3</depth></size>
  {objects}
</annotation>"""
OBJ = """<object><name>{cls}</name><difficult>0</difficult>
  <bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"""


@pytest.fixture
def voc_dir(tmp_path):
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "ImageSets/Segmentation",
                "SegmentationClass", "SegmentationClass_aug"):
        (tmp_path / sub).mkdir(parents=True)
    objects = {
        "2007_000001": [("dog", (1, 2, 5, 4)), ("person", (2, 1, 3, 3))],
        "2007_000002": [("tvmonitor", (1, 1, 6, 4))],
    }
    for name, objs in objects.items():
        # a flat gray JPEG: lossy coding keeps a flat image's value
        Image.fromarray(np.full((4, 6, 3), 128, np.uint8)).save(tmp_path / "JPEGImages" / f"{name}.jpg", quality=100)
        body = "\n".join(OBJ.format(cls=c, b=b) for c, b in objs)
        (tmp_path / "Annotations" / f"{name}.xml").write_text(XML.format(name=name, objects=body))
    (tmp_path / "ImageSets/Main/trainval.txt").write_text("2007_000001\n2007_000002\n")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("2007_000001\n")
    (tmp_path / "ImageSets/Segmentation/train_aug.txt").write_text("2007_000001\n")
    # a palette PNG as VOC ships them; the colors, written by hand in RGB: background black,
    # aeroplane (128,0,0) = class 1, dog (64,0,128) = class 12, person (192,128,128) = class 15,
    # the cream void border (224,224,192) at palette index 255
    indices = np.zeros((4, 6), np.uint8)
    indices[0, 1], indices[1, :2], indices[2, 3], indices[3, 5] = 1, 2, 3, 255
    palette = [0] * 768
    palette[3:12] = [128, 0, 0, 64, 0, 128, 192, 128, 128]
    palette[765:768] = [224, 224, 192]
    mask_png = Image.fromarray(indices, mode="P")
    mask_png.putpalette(palette)
    mask_png.save(tmp_path / "SegmentationClass/2007_000001.png")
    aug = np.zeros((4, 6), np.uint8)
    aug[1, 2], aug[3, 3] = 7, 255
    Image.fromarray(aug).save(tmp_path / "SegmentationClass_aug/2007_000001.png")
    return tmp_path


def test_detection_items(voc_dir):
    ds = PascalVOC(str(voc_dir), "trainval", order=("image", "boxes", "boxes_category", "info"))
    assert len(ds) == 2
    image, boxes, cats, info = ds[0]
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8
    assert boxes.dtype == np.float32 and boxes.tolist() == [[1, 2, 5, 4], [2, 1, 3, 3]]
    # 1 + index in class_names: dog is the 12th, person the 15th
    assert cats.dtype == np.int32 and cats.tolist() == [12, 15]
    assert info == [4, 6, "2007_000001"]
    assert ds[1][2].tolist() == [20]
    assert ds.get_img_info(1) == {"height": 4, "width": 6, "file_name": "2007_000002"}
    # info alone reads the image for its size
    assert PascalVOC(str(voc_dir), "trainval", order=("boxes", "info"))[1][1] == [4, 6, "2007_000002"]


def test_masks(voc_dir):
    ds = PascalVOC(str(voc_dir), "val", order=("image", "mask"))
    image, mask = ds[0]
    assert mask.shape == (4, 6, 1) and mask.dtype == np.uint8
    want = np.zeros((4, 6), np.uint8)
    want[0, 1], want[1, :2], want[2, 3], want[3, 5] = 1, 12, 15, 255
    np.testing.assert_array_equal(mask[..., 0], want)
    aug_mask = PascalVOC(str(voc_dir), "train_aug", order=("mask",))[0][0]
    want = np.zeros((4, 6), np.uint8)
    want[1, 2], want[3, 3] = 7, 255
    np.testing.assert_array_equal(aug_mask[..., 0], want)


def test_class_colors_are_the_voc_palette():
    # a few entries of the devkit's palette, in BGR
    assert PascalVOC.class_colors[0] == [0, 0, 0]
    assert PascalVOC.class_colors[1] == [0, 0, 128]  # aeroplane (128, 0, 0)
    assert PascalVOC.class_colors[12] == [128, 0, 64]  # dog (64, 0, 128)
    assert PascalVOC.class_colors[20] == [128, 64, 0]  # tvmonitor (0, 64, 128)
    assert len(PascalVOC.class_colors) == 21 and len(PascalVOC.class_names) == 20


def test_errors(voc_dir, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        PascalVOC(str(voc_dir), "trainval", order=("boxes", "mask"))
    with pytest.raises(FileNotFoundError, match="split file"):
        PascalVOC(str(voc_dir), "test", order=("image", "boxes"))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        PascalVOC(str(tmp_path / "nope"), "trainval", order=("image", "boxes"))
    (voc_dir / "Annotations" / "2007_000002.xml").write_text(
        XML.format(name="x", objects=OBJ.format(cls="unicorn", b=(1, 1, 2, 2))))
    ds = PascalVOC(str(voc_dir), "trainval", order=("boxes_category",))
    with pytest.raises(ValueError, match="unicorn"):
        ds[1]
