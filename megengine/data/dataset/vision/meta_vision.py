"""VisionDataset: the base class of image datasets kept under a root directory."""
import collections.abc
import os

from ..meta_dataset import MapDataset


class OrderError(ValueError, NotImplementedError):
    """A bare string given as ``order`` (``order="image"`` for ``order=("image",)``). Upstream
    reads the string's characters as names and raises NotImplementedError for the first one
    ("i is unsupported data type"); this error says what is wrong and is caught as either."""

__all__ = ["VisionDataset"]


class VisionDataset(MapDataset):
    r"""Base class of vision datasets.

    Args:
        root: directory of the dataset's files (``~`` is expanded).
        order: names of the elements of each item, as in :class:`~.VisionTransform`.
        supported_order: the names this dataset can produce.
    """

    def __init__(self, root, *, order=None, supported_order=None):
        if isinstance(root, (str, bytes, os.PathLike)):
            root = os.path.expanduser(os.fspath(root))
        self.root = root
        if order is None:
            order = ("image",)
        if isinstance(order, str):
            raise OrderError("order should be a sequence of names such as ('image',), but got "
                             "the string order={!r}".format(order))
        if not isinstance(order, collections.abc.Sequence):
            raise ValueError("order should be a sequence of names, but got order={!r}".format(order))
        if supported_order is not None:
            for key in order:
                if key not in supported_order:
                    raise NotImplementedError(
                        "{!r} is unsupported by {}; supported: {}".format(key, type(self).__name__, supported_order)
                    )
        # the caller's sequence itself, as upstream keeps it: a program printing its dataset's
        # order shows the list it passed
        self.order = order

    def __getitem__(self, index):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError
