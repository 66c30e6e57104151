"""CIFAR10 and CIFAR100: the 32x32 colour image datasets, read from their python pickle batches."""
import os
import pickle
import tarfile
from typing import Tuple

import numpy as np

from .meta_vision import VisionDataset
from .utils import default_dataset_root, download_file

__all__ = ["CIFAR10", "CIFAR100"]


class CIFAR10(VisionDataset):
    r"""CIFAR-10: items are ``(image, label)``, a (32, 32, 3) uint8 image in BGR channel order
    (as upstream, the order OpenCV uses) and an int32 label in [0, 10).

    The batches are read from ``root/cifar-10-batches-py`` (what ``cifar-10-python.tar.gz``
    unpacks to); a ``cifar-10-python.tar.gz`` in ``root`` is unpacked first.

    Args:
        root: directory of the data; default ``~/.cache/megengine/CIFAR10``.
        train: the 50000 training images if True, else the 10000 test images.
        download: fetch the archive (md5-checked) when nothing is in ``root``; False by default
            here (upstream's default is True) so nothing touches the network unasked.
        timeout: seconds to wait for a download connection or read.
    """

    url_path = "http://www.cs.utoronto.ca/~kriz/"
    raw_file_name = "cifar-10-python.tar.gz"
    raw_file_md5 = "c58f30108f718f92721af3b95e74349a"
    raw_file_dir = "cifar-10-batches-py"
    train_batch = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                   "data_batch_5"]
    test_batch = ["test_batch"]
    meta_info = {"name": "batches.meta"}

    def __init__(self, root: str = None, train: bool = True, download: bool = False,
                 timeout: int = 500):
        super().__init__(root, order=("image", "image_category"))
        self.timeout = timeout
        if self.root is None:
            self.root = os.path.join(default_dataset_root(), type(self).__name__)
        self.target_file = os.path.join(self.root, self.raw_file_dir)
        if not os.path.isdir(self.target_file):
            archive = os.path.join(self.root, self.raw_file_name)
            if not os.path.isfile(archive):
                if not download:
                    raise ValueError(
                        f"{type(self).__name__}: neither {self.target_file} nor {archive} "
                        f"exists; place the unpacked batches or the archive there, or pass "
                        f"download=True"
                    )
                self.download()
            self.process()
        self.arrays = self.bytes2array(self.train_batch if train else self.test_batch)

    def __getitem__(self, index: int) -> Tuple:
        return tuple(array[index] for array in self.arrays)

    def __len__(self) -> int:
        return len(self.arrays[0])

    @property
    def meta(self):
        """The dataset's own meta pickle (label names), keys as bytes as it was written."""
        with open(os.path.join(self.target_file, self.meta_info["name"]), "rb") as f:
            return pickle.load(f, encoding="bytes")

    def download(self):
        url = self.url_path + self.raw_file_name
        try:
            download_file(url, os.path.join(self.root, self.raw_file_name), self.raw_file_md5,
                          timeout=self.timeout)
        except OSError as exc:
            raise RuntimeError(
                f"could not download {url} ({exc}); if this machine is offline, fetch it "
                f"elsewhere and place it in {os.path.abspath(self.root)}"
            ) from exc

    def process(self):
        """Unpack the archive in ``root``."""
        with tarfile.open(os.path.join(self.root, self.raw_file_name)) as t:
            try:
                t.extractall(path=self.root, filter="data")  # refuses paths out of root
            except TypeError:  # an older Python without extraction filters
                t.extractall(path=self.root)

    def _load(self, filename):
        path = os.path.join(self.target_file, filename)
        if not os.path.isfile(path):
            raise ValueError(f"{type(self).__name__}: batch file {path} is missing")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        # rows are 3072 bytes: the R plane, then G, then B, each 32 x 32
        images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return images[..., ::-1], batch  # RGB -> BGR

    def bytes2array(self, filenames):
        data, label = [], []
        for name in filenames:
            images, batch = self._load(name)
            data.extend(images)
            label.extend(batch[b"labels"])
        return data, np.array(label, dtype=np.int32)


class CIFAR100(CIFAR10):
    r"""CIFAR-100: items are ``(image, fine_label, coarse_label)`` (100 classes in 20
    superclasses), images as in :class:`CIFAR10`; read from ``root/cifar-100-python``."""

    url_path = "http://www.cs.utoronto.ca/~kriz/"
    raw_file_name = "cifar-100-python.tar.gz"
    raw_file_md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    raw_file_dir = "cifar-100-python"
    train_batch = ["train"]
    test_batch = ["test"]
    meta_info = {"name": "meta"}

    def bytes2array(self, filenames):
        data, fine, coarse = [], [], []
        for name in filenames:
            images, batch = self._load(name)
            data.extend(images)
            fine.extend(batch[b"fine_labels"])
            coarse.extend(batch[b"coarse_labels"])
        return data, np.array(fine, dtype=np.int32), np.array(coarse, dtype=np.int32)
