"""Tests for megengine/data/dataset/vision/cifar.py on small archives built here in CIFAR's
python pickle layout (rows of R plane, G plane, B plane); nothing uses the network."""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from megengine.data.dataset import CIFAR10, CIFAR100


def rgb_images(n, seed):
    return np.random.RandomState(seed).randint(0, 256, (n, 32, 32, 3)).astype(np.uint8)


def pack(images, **labels):
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # planes R, G, B
    out = {b"data": rows}
    out.update({k.encode(): list(v) for k, v in labels.items()})
    return pickle.dumps(out)


def write_tar(path, directory, files):
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{directory}/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def test_cifar10_unpacks_and_reads_bgr_images(tmp_path):
    files, expected = {}, {}
    for i in range(5):
        imgs = rgb_images(3, i)
        files[f"data_batch_{i + 1}"] = pack(imgs, labels=[i, i, 9])
        expected[i] = imgs
    test_imgs = rgb_images(2, 9)
    files["test_batch"] = pack(test_imgs, labels=[4, 2])
    files["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"] * 10})
    write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)

    train = CIFAR10(root=str(tmp_path), train=True)
    assert len(train) == 15
    image, label = train[4]  # batch 2, second image
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and label == 1
    np.testing.assert_array_equal(image, expected[1][1][..., ::-1])  # BGR
    assert train.arrays[1].dtype == np.int32 and train.arrays[1].tolist()[-3:] == [4, 4, 9]
    test = CIFAR10(root=str(tmp_path), train=False)  # now read from the unpacked directory
    assert len(test) == 2 and test[1][1] == 2
    np.testing.assert_array_equal(test[0][0][..., 0], test_imgs[0][..., 2])
    assert test.meta[b"label_names"][0] == b"airplane"
    # bytes2array, upstream's reader of batch files by name: BGR images and int32 labels
    images, labels = test.bytes2array(["data_batch_2", "test_batch"])
    assert len(images) == 5 and labels.dtype == np.int32 and labels.tolist() == [1, 1, 9, 4, 2]
    np.testing.assert_array_equal(images[3], test_imgs[0][..., ::-1])


def test_cifar100_gives_fine_and_coarse_labels(tmp_path):
    imgs = rgb_images(4, 0)
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    (directory / "train").write_bytes(pack(imgs, fine_labels=[5, 6, 7, 8], coarse_labels=[0, 1, 2, 3]))
    (directory / "test").write_bytes(pack(imgs[:1], fine_labels=[99], coarse_labels=[19]))
    train = CIFAR100(root=str(tmp_path))
    image, fine, coarse = train[2]
    np.testing.assert_array_equal(image, imgs[2][..., ::-1])
    assert (fine, coarse) == (7, 2)
    images, fine, coarse = train.bytes2array(["test", "train"])
    assert len(images) == 5 and fine.tolist() == [99, 5, 6, 7, 8] and coarse.tolist()[:2] == [19, 0]
    assert CIFAR100(root=str(tmp_path), train=False)[0][1:] == (99, 19)


def test_missing_data_says_where_and_offline_download_fails_clearly(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="download=True"):
        CIFAR10(root=str(tmp_path))
    monkeypatch.setattr(CIFAR10, "url_path", "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(RuntimeError, match="127.0.0.1:9/cifar-10-python.tar.gz"):
        CIFAR10(root=str(tmp_path), download=True, timeout=2)
    assert not os.path.exists(tmp_path / "cifar-10-python.tar.gz")
