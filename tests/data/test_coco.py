"""Tests for megengine/data/dataset/vision/coco.py and objects365.py: COCO-format items against a hand-made fixture."""
import json

import numpy as np
import pytest

from megengine.data.dataset import COCO, Objects365

Image = pytest.importorskip("PIL.Image")


def write_image(path, h, w, rgb):
    Image.fromarray(np.full((h, w, 3), rgb, np.uint8)).save(path)


def kp(n_visible):
    """17 keypoints, the first ``n_visible`` visible (v=2) at (i, 2i)."""
    out = []
    for i in range(17):
        out += [i, 2 * i, 2 if i < n_visible else 0]
    return out


@pytest.fixture
def coco_dir(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    # ids deliberately out of order in the json: items follow increasing id
    write_image(images / "b.png", 6, 8, (255, 0, 0))
    write_image(images / "a.png", 5, 7, (0, 255, 0))
    write_image(images / "c.png", 4, 4, (0, 0, 255))
    ann = {
        "images": [
            {"id": 9, "file_name": "b.png", "height": 6, "width": 8, "license": 3, "coco_url": "u"},
            {"id": 2, "file_name": "a.png", "height": 5, "width": 7},
            {"id": 5, "file_name": "c.png", "height": 4, "width": 4},
        ],
        "annotations": [
            {"id": 1, "image_id": 2, "bbox": [1, 2, 3, 1.5], "category_id": 18, "iscrowd": 0,
             "segmentation": [[0, 0, 1, 1, 2, 0]], "keypoints": kp(6)},
            {"id": 2, "image_id": 2, "bbox": [0, 0, 2, 2], "category_id": 1, "iscrowd": 0,
             "keypoints": kp(5)},
            {"id": 3, "image_id": 9, "bbox": [1, 1, 0, 3], "category_id": 1, "iscrowd": 0,
             "keypoints": kp(17)},  # zero width: dropped by the filter
            {"id": 4, "image_id": 9, "bbox": [1, 1, 2, 2], "category_id": 3, "iscrowd": 1,
             "keypoints": kp(17)},  # crowd: dropped by the filter
            # image 5 has none
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    return str(images), str(path)


def test_items_by_hand(coco_dir):
    root, ann = coco_dir
    ds = COCO(root, ann, order=("image", "boxes", "boxes_category", "keypoints", "info"))
    assert len(ds) == 3
    # json ids 1, 3, 18 -> contiguous 1, 2, 3
    assert ds.json_category_id_to_contiguous_id == {1: 1, 3: 2, 18: 3}
    assert ds.contiguous_category_id_to_json_id == {1: 1, 2: 3, 3: 18}
    image, boxes, cats, points, info = ds[0]  # id 2
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [0, 255, 0]
    assert boxes.dtype == np.float32 and boxes.tolist() == [[1, 2, 4, 3.5], [0, 0, 2, 2]]
    assert cats.dtype == np.int32 and cats.tolist() == [3, 1]
    assert points.shape == (2, 17, 3) and points.dtype == np.float32
    assert points[0, 4].tolist() == [4, 8, 2] and points[1, 5].tolist() == [5, 10, 0]
    assert info == [5, 7, "a.png"]
    image, boxes, cats, _, info = ds[1]  # id 5: no annotations
    assert image[0, 0].tolist() == [255, 0, 0]  # blue in BGR
    assert boxes.shape == (0, 4) and boxes.dtype == np.float32 and cats.shape == (0,)
    assert info == [4, 4, "c.png"]
    assert ds[2][4] == [6, 8, "b.png"] and ds[2][2].tolist() == [1, 2]
    assert ds.get_img_info(2) == {"id": 9, "file_name": "b.png", "height": 6, "width": 8}


def test_remove_images_without_annotations(coco_dir):
    root, ann = coco_dir
    ds = COCO(root, ann, remove_images_without_annotations=True,
              order=("image", "boxes", "boxes_category", "info"))
    # image 9 loses its crowd and zero-width boxes, image 5 has none
    assert ds.ids == [2] and len(ds) == 1
    assert ds[0][3] == [5, 7, "a.png"]
    # keypoint training also needs 10 visible keypoints: image 2 has 6 + 5
    kp_ds = COCO(root, ann, remove_images_without_annotations=True, order=("image", "keypoints"))
    assert kp_ds.ids == [2]
    # an order without boxes still filters by them
    info_only = COCO(root, ann, remove_images_without_annotations=True, order=("info",))
    assert [x[0] for x in info_only] == [[5, 7, "a.png"]]


def test_bad_order_and_file(coco_dir, tmp_path):
    root, ann = coco_dir
    with pytest.raises(NotImplementedError, match="mask"):
        COCO(root, ann, order=("image", "mask"))
    with pytest.raises(FileNotFoundError, match="annotation file"):
        COCO(root, str(tmp_path / "missing.json"), order=("image",))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="'annotations'"):
        COCO(root, str(bad), order=("image",))
    # keypoints of a detection annotation (no "keypoints" field): named, where upstream's
    # KeyError says only 'keypoints'
    detection = json.loads(open(ann).read())
    del detection["annotations"][1]["keypoints"]
    det = tmp_path / "det.json"
    det.write_text(json.dumps(detection))
    ds = COCO(root, str(det), order=("keypoints",))
    with pytest.raises(ValueError, match="image 2 has no 'keypoints'"):
        ds[0]
    assert ds[2][0].shape == (2, 17, 3)  # (image 9's annotations have theirs)


def test_class_tables():
    assert len(COCO.class_names) == 80 and COCO.class_names[0] == "person"
    assert COCO.class_names[-1] == "toothbrush" and COCO.classes_originID["toothbrush"] == 90
    # the official ids are increasing in class_names order, so contiguous id - 1 indexes it
    ids = [COCO.classes_originID[n] for n in COCO.class_names]
    assert ids == sorted(ids) and len(set(ids)) == 80
    assert len(COCO.keypoint_names) == 17
    assert len(Objects365.class_names) == 365 and len(set(Objects365.class_names)) == 365
    assert Objects365.class_names[:3] == ("person", "sneakers", "chair")
    assert Objects365.class_names[-1] == "flashlight"


def test_objects365(coco_dir):
    root, ann = coco_dir
    ds = Objects365(root, ann, remove_images_without_annotations=True,
                    order=("image", "boxes", "boxes_category", "info"))
    assert len(ds) == 1
    _, boxes, cats, info = ds[0]
    assert boxes.tolist() == [[1, 2, 4, 3.5], [0, 0, 2, 2]] and cats.tolist() == [3, 1]
    # upstream's Objects365 keeps every field of an image record (its COCO drops four)
    assert Objects365(root, ann, order=("info",)).get_img_info(2)["coco_url"] == "u"
    assert "coco_url" not in COCO(root, ann, order=("info",)).get_img_info(2)
    with pytest.raises(NotImplementedError, match="keypoints"):
        Objects365(root, ann, order=("image", "keypoints"))
