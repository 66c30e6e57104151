"""Whether a tensor captured by ``trace(capture_as_const=True)`` still holds its captured value,
without reading all of its bytes on every checked call.

Upstream's compiled trace asserts that a captured tensor is unchanged ("tensors not equals"),
and so do we (`check._Checker`). Comparing every weight bit for bit costs about 4 ms per 48 MB
on each call, so a `CaptureGuard` remembers when it last found the value unchanged: the write
count of the engine (`megengine.core.tensor._writes[0]`, bumped by every engine path that writes
into a tensor's storage: ``_reset``/``set_value``, ``_inplace`` (setitem, ``+=``,
``_inplace_add_``), ``Optimizer.step``, ``zero_grad``, ``bcast_list_``) and the array object the
tensor held. While both stand still the value cannot have changed, and nothing is read. Any
write anywhere moves the count, and the next use compares the bits once more (and, if they are
still the same, remembers the new count).

Writes the engine cannot see are storage shared with someone else, so such arrays are always
compared:
- an array that is a view of another array (its ``base`` is set): written through the other;
- storage lent by torch (the PyTorch bridge's parameters, whose base is a capsule): a torch
  optimizer or ``param.data.copy_`` writes it without the engine;
- CuPy memory the pool does not own (``UnownedMemory``: torch's CUDA storage).
``Tensor.numpy()`` returns a copy, so no host view of a tensor's own storage is handed out.
Code that writes ``tensor._data`` in place itself (a private attribute) is not seen.
"""
from ..core import dispatch
from ..core.tensor import _writes
from ._program import _same_bits


def _own_storage(array):
    """Whether only the engine writes ``array``'s memory (so the write count sees every
    change): an array that owns its memory, not a view and not lent by torch."""
    if getattr(array, "base", None) is not None:
        return False
    mem = getattr(getattr(array, "data", None), "mem", None)  # (CuPy: who owns the memory)
    return mem is None or type(mem).__name__ != "UnownedMemory"


class CaptureGuard:
    """Tensor ``tensor`` captured with value ``const`` (a copy made at trace time)."""

    __slots__ = ("tensor", "const", "array", "writes")

    def __init__(self, tensor, const):
        self.tensor, self.const = tensor, const
        self.array = None  # the array found unchanged last, at write count ``writes``
        self.writes = -1

    def unchanged(self):
        """Whether the tensor holds the captured bits now (cheap while nothing was written)."""
        t = self.tensor
        a = t._data
        if a is self.array and self.writes == _writes[0]:
            return True
        writes = _writes[0]
        with dispatch.on_device(t._device):  # (CuPy compares on the array's GPU)
            same = _same_bits(a, self.const)
        if same and _own_storage(a):
            self.array, self.writes = a, writes
        else:
            self.array, self.writes = None, -1
        return same
