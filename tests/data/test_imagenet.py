"""Tests for megengine/data/dataset/vision/imagenet.py: class folders, devkit meta, and extraction from raw tars."""
import hashlib
import io
import os
import tarfile

import numpy as np
import pytest

from megengine.data.dataset import ImageNet

Image = pytest.importorskip("PIL.Image")


def png_bytes(value):
    buf = io.BytesIO()
    Image.fromarray(np.full((2, 3, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_devkit(devkit_data):
    scipy_io = pytest.importorskip("scipy.io")
    devkit_data.mkdir(parents=True, exist_ok=True)
    # ids 1, 2 are leaves (the classes); id 3 is an inner node of the hierarchy
    synsets = np.zeros((3,), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"),
                                    ("gloss", "O"), ("num_children", "O")])
    synsets[0] = (1, "n01440764", "tench, Tinca tinca", "a fish", 0)
    synsets[1] = (2, "n01443537", "goldfish, Carassius auratus", "a fish", 0)
    synsets[2] = (3, "n00000001", "fish", "inner", 2)
    scipy_io.savemat(str(devkit_data / "meta.mat"), {"synsets": synsets})
    # validation images in file name order: 2, 1, 2
    (devkit_data / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n2\n")


def test_class_folders_and_meta(tmp_path):
    for split, wnid, value in (("train", "n01443537", 1), ("train", "n01440764", 2), ("val", "n01440764", 3)):
        (tmp_path / split / wnid).mkdir(parents=True, exist_ok=True)
        (tmp_path / split / wnid / f"x{value}.png").write_bytes(png_bytes(value))
    train = ImageNet(str(tmp_path), train=True)
    assert train.root == train.target_folder == str(tmp_path / "train")
    assert train.root_dir == str(tmp_path) and train.target_folder == str(tmp_path / "train")
    assert train.class_dict == {"n01440764": 0, "n01443537": 1}
    assert len(train) == 2
    image, label = train[1]
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8 and image[0, 0, 0] == 1 and label == 1
    val = ImageNet(str(tmp_path), train=False)
    assert len(val) == 1 and val[0][1] == 0 and val[0][0][0, 0, 0] == 3
    # the devkit is needed only for meta
    with pytest.raises(FileNotFoundError, match="meta.mat"):
        train.meta
    write_devkit(tmp_path / "ILSVRC2012_devkit_t12" / "data")
    idx_to_wnid, wnid_to_classes = train.meta
    assert idx_to_wnid == {1: "n01440764", 2: "n01443537"}
    assert wnid_to_classes["n01443537"] == ("goldfish", "Carassius auratus")
    assert os.path.isfile(tmp_path / "ILSVRC2012_devkit_t12" / "meta.pkl")
    assert train.meta == (idx_to_wnid, wnid_to_classes)  # now from the cache
    assert train.valid_ground_truth == [2, 1, 2]


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_extract_raw_tars(tmp_path):
    # the devkit archive, the val tar (flat images) and the train tar (one tar per class)
    staging = tmp_path / "staging"
    write_devkit(staging / "ILSVRC2012_devkit_t12" / "data")
    with tarfile.open(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(staging / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", "w") as tar:
        for i in range(3):
            add_bytes(tar, f"ILSVRC2012_val_0000000{i + 1}.png", png_bytes(10 + i))
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w") as tar:
        for wnid, value in (("n01440764", 20), ("n01443537", 21)):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                add_bytes(class_tar, f"{wnid}_1.png", png_bytes(value))
            add_bytes(tar, f"{wnid}.tar", inner.getvalue())

    class TinyImageNet(ImageNet):
        raw_file_meta = {
            key: (name, md5(tmp_path / name)) for key, (name, _) in ImageNet.raw_file_meta.items()
        }

    val = TinyImageNet(str(tmp_path), train=False)
    # ground truth 2, 1, 2: images 1 and 3 are goldfish (n01443537), image 2 tench
    assert sorted(os.listdir(tmp_path / "val" / "n01443537")) == ["ILSVRC2012_val_00000001.png",
                                                                 "ILSVRC2012_val_00000003.png"]
    assert [(int(img[0, 0, 0]), int(label)) for img, label in val] == [(11, 0), (10, 1), (12, 1)]
    train = TinyImageNet(str(tmp_path), train=True)
    assert [(int(img[0, 0, 0]), int(label)) for img, label in train] == [(20, 0), (21, 1)]
    assert train.check_raw_file()  # all three archives are there
    assert not os.path.exists(tmp_path / "train" / "n01440764.tar")

    class Damaged(ImageNet):
        raw_file_meta = dict(ImageNet.raw_file_meta)

    os.rename(tmp_path / "train", tmp_path / "train_done")
    with pytest.raises(RuntimeError, match="md5"):
        Damaged(str(tmp_path), train=True)
    assert not os.path.exists(tmp_path / "train")
    (tmp_path / "ILSVRC2012_img_val.tar").unlink()
    assert not train.check_raw_file()


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageNet(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar"):
        ImageNet(str(tmp_path), train=True)
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_devkit_t12.tar.gz"):
        ImageNet(str(tmp_path), train=False)
