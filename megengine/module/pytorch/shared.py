"""One torch tensor is one megengine tensor: the registry of zero-copy mirrors, and how they pickle.

A torch parameter can be reachable in several ways: tied weights (``dec.weight = enc.weight``),
one torch module wrapped by two `PyTorchModule`s, or a mirror set on a megengine module too. If
each way made its own megengine `Parameter`, an optimizer would see several parameters over one
memory, give each the full gradient and apply it several times. So `mirror_of` hands out one
megengine tensor per torch tensor: megengine's module walk lists it once (it deduplicates by
identity, as upstream and torch's ``named_parameters()`` do) and its gradient is summed once.

The registry holds both sides weakly (a mirror keeps its torch tensor alive, not the other way
round), so wrapping never leaks. A mirror pickles and deep-copies *as its torch tensor*: pickle's
memo then maps every mirror of one torch tensor, and the torch module holding that tensor, to
one copy, and loading rebuilds the zero-copy view from the loaded tensor.

Devices. Every megengine CPU device (``cpu0``, ``cpu1``, ...: one host memory) is torch's
``cpu``, and ``gpuN`` is ``cuda:N``; a wrapper keeps the megengine device it was made for.
While ``mge.load`` maps devices (``map_location``), it loads the torch tensors where the mapping
sends them (serialization.py), and a loaded mirror, like a loaded wrapper, takes the mapped
device too (`loaded_device`).
"""
import threading
import weakref

import torch

from ...core import dispatch
from ...core import torch_bridge as _bridge
from ...core.tensor import Parameter, Tensor, _mapped_device
from ...device import canonical_device

__all__ = ["TorchParameter", "TorchBuffer", "mirror_of", "torch_device", "loaded_device"]


def torch_device(device):
    """The torch device for a canonical megengine device name (``cpu0`` or ``gpuN``)."""
    return torch.device("cpu") if device.startswith("cpu") else torch.device("cuda", int(device[3:]))


def loaded_device(saved):
    """The device for a wrapper or mirror that was saved on ``saved`` (a canonical name), as the
    running ``mge.load`` maps it (``Tensor.dmap_callback``); ``saved`` itself outside a load
    (``pickle.load``, ``copy.deepcopy``)."""
    if Tensor.dmap_callback is None:
        return saved
    return canonical_device(_mapped_device(saved if ":" in saved else saved + ":0"))


class _TorchView:
    """What both kinds of mirror add: the torch tensor they view, pinned storage (writes go into
    torch's memory, see `Tensor._reset`), and pickling as that tensor."""

    _pinned_storage = True

    def _wrote_pinned(self):
        # written while a recorded op may hold the value: as after an in-place write in torch,
        # a torch graph that saved the tensor raises at backward instead of using the new value
        torch.autograd.graph.increment_version(self.torch_tensor)
        # megengine's ops recorded before the write whose backward reads it, at gm.backward
        # (the op that computed the value written too: `w *= s` reads the old w for s's
        # gradient; `w *= 2` reads only the 2, see `Op.backward_reads`)
        dispatch.note_pinned_write(self._data)

    @property
    def torch_tensor(self):
        """The torch tensor whose memory this tensor is."""
        return self.__dict__["_torch_tensor"]

    def __reduce_ex__(self, protocol):
        return _load_mirror, (self.torch_tensor, self._device, isinstance(self, Parameter))


class TorchParameter(_TorchView, Parameter):
    """A `Parameter` whose memory is a torch parameter's."""


class TorchBuffer(_TorchView, Tensor):
    """A buffer (e.g. BatchNorm's running mean) whose memory is a torch buffer's."""


# id(torch tensor) -> (weakref to it, weakref to its mirror). Keyed by id, not by the tensor:
# torch tensors compare elementwise, which a WeakKeyDictionary's lookup would trip over.
_registry = {}
# reentrant: a garbage collection while mirror_of holds it (allocating the weakref below) runs
# _forget for a dead torch tensor on the same thread, which with a plain Lock deadlocked the
# process (seen in the test suite: the guide's LeNet test hung in _forget)
_registry_lock = threading.RLock()


def _forget(key, tensor_ref):
    with _registry_lock:
        entry = _registry.get(key)
        if entry is not None and entry[0] is tensor_ref:
            del _registry[key]


def mirror_of(tensor, device, parameter=True):
    """The megengine tensor sharing ``tensor``'s memory: the same object for the same torch tensor
    (while it lives and still has that memory), a new `TorchParameter`/`TorchBuffer` otherwise."""
    key = id(tensor)
    with _registry_lock:
        entry = _registry.get(key)
        mirror = None
        if entry is not None and entry[0]() is tensor:
            mirror = entry[1]()
        if mirror is not None and mirror._torch_address == tensor.data_ptr() \
                and tuple(mirror.shape) == tuple(tensor.shape):
            if isinstance(mirror, TorchParameter) != bool(parameter):
                raise ValueError(
                    "PyTorchModule: one torch tensor is a parameter in one place and a buffer in "
                    "another; make it one or the other in the torch module"
                )
            if mirror._device != device:
                raise ValueError(
                    f"PyTorchModule: this torch tensor is already a megengine tensor on "
                    f"{mirror._device}, it cannot also be one on {device}; wrap the torch module "
                    f"on {mirror._device}"
                )
            return mirror
        if tensor.device != torch_device(device):
            raise RuntimeError(
                f"PyTorchModule: a torch tensor on {tensor.device} cannot be a megengine tensor "
                f"on {device} (its memory is elsewhere); when loading, map both with "
                "megengine.load(f, map_location=...), or re-save a file written before "
                "map_location reached torch tensors"
            )
        cls = TorchParameter if parameter else TorchBuffer
        mirror = cls._wrap(_bridge.from_torch(tensor.detach()), device)
        dispatch.pin_root(mirror._data)  # its megengine views keep values across writes
        mirror._torch_tensor = tensor
        mirror._torch_address = tensor.data_ptr()  # `tensor.data = ...` would move it
        tensor_ref = weakref.ref(tensor, lambda ref, key=key: _forget(key, ref))
        _registry[key] = (tensor_ref, weakref.ref(mirror))
        return mirror



def _load_mirror(tensor, device, parameter):
    """How a pickled mirror comes back: the mirror of its (already loaded) torch tensor, on the
    device ``mge.load``'s ``map_location`` gives the saved one (where the tensor now is)."""
    return mirror_of(tensor, loaded_device(device), parameter)
