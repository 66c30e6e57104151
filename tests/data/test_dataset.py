"""Tests of megengine/data/dataset: ArrayDataset, StreamDataset and MNIST's IDX reading
and downloading (from a local HTTP server; nothing here uses the network)."""
import functools
import gzip
import hashlib
import http.server
import os
import struct
import threading

import numpy as np
import pytest

from megengine.data.dataset import (
    MNIST,
    ArrayDataset,
    ConcatDataset,
    Dataset,
    MapDataset,
    StreamDataset,
    VisionDataset,
)


def test_array_dataset():
    images = np.arange(24).reshape(4, 3, 2)
    labels = np.array([5, 6, 7, 8])
    ds = ArrayDataset(images, labels)
    assert isinstance(ds, Dataset) and isinstance(ds, MapDataset)
    assert len(ds) == 4
    image, label = ds[2]
    np.testing.assert_array_equal(image, images[2])
    assert label == 7
    assert len(ArrayDataset([1, 2, 3])) == 3 and ArrayDataset([1, 2, 3])[1] == (2,)
    with pytest.raises(ValueError, match="inconsistent"):
        ArrayDataset(images, labels[:3])
    with pytest.raises(ValueError, match="at least one"):
        ArrayDataset()


def test_abstract_datasets():
    for abstract in (Dataset, MapDataset, StreamDataset):
        with pytest.raises(TypeError, match="abstract"):
            abstract()

    class NoLen(Dataset):
        def __getitem__(self, i):
            return i

    with pytest.raises(TypeError, match="__len__"):
        NoLen()

    class Count(StreamDataset):
        def __iter__(self):
            return iter(range(3))

    stream = Count()
    assert list(stream) == [0, 1, 2]
    # as upstream, a stream has no index and no length (AssertionError; also a TypeError)
    with pytest.raises(AssertionError, match="can not get item from StreamDataset"):
        stream[0]
    with pytest.raises(TypeError, match="does not have length"):
        len(stream)
    with pytest.raises(TypeError, match="streams"):
        stream + stream
    with pytest.raises(TypeError, match="StreamDataset"):
        ConcatDataset([ArrayDataset([1]), stream])


def test_concat_dataset_indexes_across_parts():
    a = ArrayDataset(np.arange(3), np.array([10, 11, 12]))
    b = ArrayDataset(np.arange(3, 5), np.array([13, 14]))
    empty = ArrayDataset(np.zeros((0,)), np.zeros((0,)))
    c = ArrayDataset(np.arange(5, 9), np.array([15, 16, 17, 18]))
    cat = ConcatDataset([a, empty, b, c])
    assert isinstance(cat, Dataset) and len(cat) == 9
    expected = [(i, 10 + i) for i in range(9)]  # sample i holds (i, 10 + i) by construction
    assert [tuple(int(v) for v in cat[i]) for i in range(9)] == expected
    assert [tuple(int(v) for v in cat[i]) for i in range(-9, 0)] == expected
    for bad in (9, -10):
        with pytest.raises(IndexError, match="out of range"):
            cat[bad]
    both = a + c
    assert isinstance(both, ConcatDataset) and len(both) == 7 and int(both[3][1]) == 15
    with pytest.raises(ValueError, match="at least one"):
        ConcatDataset([])


def test_concat_dataset_through_the_dataloader():
    from megengine.data import DataLoader, SequentialSampler

    a = ArrayDataset(np.arange(4, dtype=np.float32).reshape(4, 1))
    b = ArrayDataset(np.arange(4, 7, dtype=np.float32).reshape(3, 1))
    loader = DataLoader(ConcatDataset([a, b]), SequentialSampler(a + b, batch_size=3))
    batches = [batch[0][:, 0].tolist() for batch in loader]
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


def idx_images(images):
    n, h, w = images.shape
    return struct.pack(">iiii", 2051, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels):
    return struct.pack(">ii", 2049, len(labels)) + np.asarray(labels, np.uint8).tobytes()


def write(path, data, compress):
    if compress:
        with gzip.open(path + ".gz", "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def make_split(root, prefix, n, compress, seed=0):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
    labels = rng.randint(0, 10, size=n).astype(np.uint8)
    write(os.path.join(root, prefix + "-images-idx3-ubyte"), idx_images(images), compress)
    write(os.path.join(root, prefix + "-labels-idx1-ubyte"), idx_labels(labels), compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_reads_idx_files(tmp_path, compress):
    root = str(tmp_path)
    train_images, train_labels = make_split(root, "train", 5, compress, seed=1)
    test_images, test_labels = make_split(root, "t10k", 3, compress, seed=2)
    train = MNIST(root, train=True, download=False)
    assert len(train) == 5
    image, label = train[4]
    assert image.shape == (28, 28, 1) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[:, :, 0], train_images[4])
    assert label == train_labels[4] and label.dtype == np.int32
    assert train.meta["images"] == {"magic": 2051, "imgs": 5, "height": 28, "width": 28}
    test = MNIST(root, train=False, download=False)
    assert len(test) == 3
    np.testing.assert_array_equal(test[0][0][:, :, 0], test_images[0])
    assert [int(test[i][1]) for i in range(3)] == test_labels.tolist()


def test_mnist_missing_files_say_where(tmp_path):
    with pytest.raises(ValueError) as info:
        MNIST(str(tmp_path), train=True)  # download=False by default: no network touched
    message = str(info.value)
    assert str(tmp_path) in message
    assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message


def test_mnist_rejects_bad_files(tmp_path):
    root = str(tmp_path)
    make_split(root, "train", 2, compress=False)
    with open(os.path.join(root, "train-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">ii", 2051, 2) + b"\x00\x01")  # wrong magic number
    with pytest.raises(ValueError, match="magic number 2051 instead of 2049"):
        MNIST(root, download=False)
    with open(os.path.join(root, "train-labels-idx1-ubyte"), "wb") as f:
        f.write(struct.pack(">ii", 2049, 5) + b"\x00\x01")  # announces 5, holds 2
    with pytest.raises(ValueError, match="truncated"):
        MNIST(root, download=False)
    with open(os.path.join(root, "train-labels-idx1-ubyte"), "wb") as f:
        f.write(idx_labels([1, 2, 3]))  # 3 labels for 2 images
    with pytest.raises(ValueError, match="do not belong together"):
        MNIST(root, download=False)


def test_mnist_offline_download_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    root = str(tmp_path / "mnist")
    with pytest.raises(RuntimeError) as info:
        MNIST(root, train=False, download=True, timeout=5)
    message = str(info.value)
    assert "http://127.0.0.1:9/t10k-images-idx3-ubyte.gz" in message
    assert "offline" in message and root in message
    assert os.listdir(root) == []  # no partial files left behind


@pytest.fixture
def http_root(tmp_path):
    """A directory served over HTTP on localhost; yields (directory, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield str(served), "http://127.0.0.1:{}/".format(server.server_address[1])
    server.shutdown()
    server.server_close()


def md5_of(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def test_mnist_download_checks_md5(tmp_path, monkeypatch, http_root):
    served, url = http_root
    images, labels = make_split(served, "t10k", 4, compress=True)
    names = MNIST.raw_file_name
    md5s = ["0" * 32, "0" * 32] + [md5_of(os.path.join(served, n)) for n in names[2:]]
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/", url])  # the first one is down
    monkeypatch.setattr(MNIST, "raw_file_md5", md5s)
    root = str(tmp_path / "dl")
    test = MNIST(root, train=False, download=True, timeout=5)
    assert len(test) == 4
    np.testing.assert_array_equal(test[3][0][:, :, 0], images[3])
    assert sorted(os.listdir(root)) == sorted(names[2:])

    # a served file whose checksum does not match is refused and not kept
    monkeypatch.setattr(MNIST, "raw_file_md5", md5s[:2] + ["f" * 32, md5s[3]])
    other = str(tmp_path / "bad")
    with pytest.raises(RuntimeError, match="md5"):
        MNIST(other, train=False, download=True, timeout=5)
    assert "t10k-images-idx3-ubyte.gz" not in os.listdir(other)


def test_vision_dataset_keeps_the_order_it_was_given():
    # upstream 1.13 measured: Asthestarsfalll/CrowdHuman's dataset prints self.order, the list it
    # was given (the same object); order=None gives ('image',); a name outside supported_order
    # raises NotImplementedError
    class Boxes(VisionDataset):
        supported_order = ("image", "boxes", "info")

        def __init__(self, order=None):
            super().__init__("/tmp", order=order, supported_order=self.supported_order)

    order = ["image", "boxes"]
    assert Boxes(order).order is order
    assert Boxes(("boxes", "image")).order == ("boxes", "image")
    assert Boxes().order == ("image",)
    with pytest.raises(NotImplementedError, match="masks"):
        Boxes(["image", "masks"])
