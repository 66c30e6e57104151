"""Collator: merges a list of samples into one batch of numpy arrays."""
import collections.abc

import numpy as np

from ..core.tensor import Tensor

__all__ = ["Collator"]

_ERR_FORMAT = (
    "Collator: samples must contain numpy arrays, megengine Tensors, numbers, strings, bytes, "
    "dicts, tuples or lists; found {}. Pass DataLoader(collator=...) to batch other types"
)


class Collator:
    r"""Merges a list of samples into a mini-batch.

    Arrays are stacked along a new first axis (megengine Tensors too: they are copied to host
    arrays first, so a batch is numpy whatever the dataset returns), numbers become 1-D arrays,
    strings are given back as the sequence they came in (a tuple of names from a DataLoader's
    batch or a tuple sample's field, a list from a dict's field, as upstream), and dicts, named
    tuples, tuples and lists are collated element by element (tuples and lists come back as
    lists): ``[(CHW, label), ...]`` -> ``[NCHW, N]``.
    """

    def apply(self, inputs):
        """Collate ``inputs``, a sequence of samples of the same structure."""
        if len(inputs) == 0:
            raise ValueError("Collator got an empty batch; check the sampler's batch_size and drop_last")
        elem = inputs[0]
        if isinstance(elem, Tensor):
            # upstream's collator refuses Tensors, yet programs written for it (RIFE's
            # VimeoDataset) return them from __getitem__; batching their host copies costs one
            # copy and keeps the batch a picklable numpy array for worker processes
            if not all(isinstance(x, Tensor) for x in inputs):
                raise TypeError("Collator got a batch mixing megengine Tensors and other types "
                                "in one field; return the same type from every __getitem__")
            inputs = [x.numpy() for x in inputs]
            elem = inputs[0]
        if isinstance(elem, np.ndarray):
            if elem.dtype.kind == "O":  # (arrays of str or bytes stack, as upstream)
                raise TypeError(_ERR_FORMAT.format("an array of dtype {}".format(elem.dtype)))
            shapes = {np.shape(x) for x in inputs}
            if len(shapes) > 1:
                raise ValueError(
                    "Collator cannot stack arrays of different shapes {} into one batch; "
                    "make them equal with a transform (e.g. Resize or RandomCrop) or pass a "
                    "custom collator".format(sorted(shapes))
                )
            return np.ascontiguousarray(np.stack(inputs))
        if isinstance(elem, (str, bytes, np.str_, np.bytes_)):
            return inputs  # as given: a DataLoader's batch is a tuple, a field of it one too
        if isinstance(elem, np.generic):  # numpy scalar
            return np.array(inputs)
        if isinstance(elem, float):
            return np.array(inputs, dtype=np.float64)
        if isinstance(elem, int):  # bool included
            return np.array(inputs)
        if isinstance(elem, collections.abc.Mapping):
            return {key: self.apply([d[key] for d in inputs]) for key in elem}
        if isinstance(elem, collections.abc.Sequence):
            if any(len(x) != len(elem) for x in inputs):
                raise ValueError(
                    "Collator got samples with different numbers of elements {}; every sample "
                    "of a batch must have the same structure".format(sorted({len(x) for x in inputs}))
                )
            columns = [self.apply(samples) for samples in zip(*inputs)]
            if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
                return type(elem)(*columns)
            return columns
        raise TypeError(_ERR_FORMAT.format(type(elem)))
