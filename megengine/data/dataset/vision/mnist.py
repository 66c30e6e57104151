"""MNIST: the handwritten digits dataset, read from the standard IDX files (gzip or raw)."""
import gzip
import os
import struct
from typing import Tuple

import numpy as np

from .meta_vision import VisionDataset
from .utils import default_dataset_root, download_file

__all__ = ["MNIST"]

_IMAGES_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions
_LABELS_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension


class MNIST(VisionDataset):
    r"""The MNIST dataset: items are ``(image, label)`` with a (28, 28, 1) uint8 image
    and an int32 label.

    The files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` are read from ``root``,
    each either gzip-compressed (``.gz``) or uncompressed.

    Args:
        root: directory of the files; default ``~/.cache/megengine/MNIST``.
        train: the training set (60000 items) if True, else the test set (10000).
        download: fetch missing files from :attr:`mirrors` (md5-checked) if True;
            if False (the default here; upstream's is True), missing files raise
            ``ValueError`` and nothing touches the network.
        timeout: seconds to wait for a download connection or read.
    """

    mirrors = [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ]
    url_path = mirrors[0]
    raw_file_name = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    raw_file_md5 = [
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ]

    def __init__(self, root: str = None, train: bool = True, download: bool = False,
                 timeout: int = 500):
        super().__init__(root, order=("image", "image_category"))
        self.timeout = timeout
        if self.root is None:
            self.root = self._default_root
        names = self.raw_file_name[:2] if train else self.raw_file_name[2:]
        md5s = self.raw_file_md5[:2] if train else self.raw_file_md5[2:]
        paths = [self._find(name) for name in names]
        if None in paths:
            missing = [name for name, path in zip(names, paths) if path is None]
            if not download:
                raise ValueError(
                    "MNIST files are missing in {}: {}. Place them there (gzip-compressed, or "
                    "uncompressed without '.gz'), or pass download=True".format(
                        os.path.abspath(self.root), ", ".join(missing)
                    )
                )
            for name, md5 in zip(names, md5s):
                if self._find(name) is None:
                    self._download(name, md5)
            paths = [self._find(name) for name in names]
        self.process_files(*paths)

    @property
    def _default_root(self):
        return os.path.join(default_dataset_root(), type(self).__name__)

    @property
    def meta(self):
        return self._meta_data

    def __getitem__(self, index: int) -> Tuple:
        return tuple(array[index] for array in self.arrays)

    def __len__(self) -> int:
        return len(self.arrays[0])

    def _find(self, gz_name):
        """Path of ``gz_name`` or of its uncompressed twin in root, or None."""
        for name in (gz_name, gz_name[: -len(".gz")]):
            path = os.path.join(self.root, name)
            if os.path.isfile(path):
                return path
        return None

    def _download(self, name, md5):
        os.makedirs(self.root, exist_ok=True)
        target = os.path.join(self.root, name)
        failures = []
        for mirror in self.mirrors:
            url = mirror + name
            try:
                download_file(url, target, md5, timeout=self.timeout)
                return
            except (OSError, RuntimeError) as exc:  # URLError and socket timeouts are OSErrors
                failures.append("{} ({})".format(url, exc))
        raise RuntimeError(
            "could not download MNIST file {}; tried:\n  {}\nIf this machine is offline, download "
            "the files from one of these URLs elsewhere and place them in {} (gzip-compressed, "
            "or uncompressed without '.gz')".format(name, "\n  ".join(failures), os.path.abspath(self.root))
        )

    def process_files(self, images_path, labels_path):
        """Read an images file and a labels file into ``self.arrays`` and ``self.meta``."""
        images = _read_idx(images_path, _IMAGES_MAGIC)
        labels = _read_idx(labels_path, _LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(
                "{} holds {} images but {} holds {} labels; the files do not belong together".format(
                    images_path, len(images), labels_path, len(labels)
                )
            )
        n, height, width = images.shape
        self._meta_data = {
            "images": {"magic": _IMAGES_MAGIC, "imgs": n, "height": height, "width": width},
            "labels": {"magic": _LABELS_MAGIC, "imgs": len(labels)},
        }
        self.arrays = (images[..., np.newaxis], labels.astype(np.int32))


def _read_idx(path, expected_magic):
    """Read an IDX file of unsigned bytes (gzip or raw) into an array of its shape."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError("cannot read {}: {}; delete it and download it again".format(path, exc)) from exc
    if len(data) < 4:
        raise ValueError("{} is too short to be an IDX file".format(path))
    (magic,) = struct.unpack_from(">i", data, 0)
    if magic != expected_magic:
        raise ValueError(
            "{} is not the expected IDX file: magic number {} instead of {}".format(path, magic, expected_magic)
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError("{} is truncated: its header is incomplete".format(path))
    shape = struct.unpack_from(">" + "i" * ndim, data, 4)
    size = int(np.prod(shape))
    if len(data) - header < size:
        raise ValueError(
            "{} is truncated: the header announces shape {} ({} bytes) but only {} bytes follow".format(
                path, shape, size, len(data) - header
            )
        )
    # a writable copy: users may change items in place
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=header).reshape(shape).copy()
