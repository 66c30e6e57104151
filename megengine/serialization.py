"""`save` and `load` in upstream MegEngine 1.x's pickle format; `load` can move tensors, torch's too."""
import functools
import io
import operator
import os
import pickle
import re
import shutil
import tempfile
import threading

import numpy as np

from .core.ops import ArgumentError, ArgumentKindError
from .core.tensor import Tensor
from .device import _saved_device_here, canonical_device, parse_device_name

__all__ = ["save", "load"]

# Tensor.dmap_callback is one class attribute (upstream's design): loads in two threads at once
# would see each other's map_location, so they take turns.
_load_lock = threading.RLock()


def save(obj, f, pickle_module=pickle, pickle_protocol=pickle.DEFAULT_PROTOCOL):
    """Pickle ``obj`` (a Module, a state dict, an Optimizer's state dict, ...) to ``f``.

    ``f`` is a file name or a binary file object. The file is a plain pickle in upstream
    MegEngine 1.x's format: a Tensor is ``megengine.tensor.Tensor`` (or ``Parameter``) rebuilt
    from its value (a numpy array), dtype and device name (``"cpu0:0"``), so upstream's
    ``mge.load`` reads it and ``pickle.load`` does too. Different Python versions may default to
    different pickle protocols: pass ``pickle_protocol`` explicitly to load the file with
    another Python.

    A save to a file name that fails (an object pickle cannot write) leaves the file as it was:
    an existing file is replaced only once the new one is complete, and a new one is removed.
    """
    if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__"):
        return _save_to_path(obj, os.fsdecode(f), pickle_module, pickle_protocol)
    if not hasattr(f, "write"):
        raise ArgumentKindError(
            f"save: f must be a file name or a writable binary file, got {type(f).__name__}"
        )
    pickler = getattr(pickle_module, "Pickler", None)
    if isinstance(pickler, type):
        _portable_pickler(pickler)(f, pickle_protocol).dump(obj)
    else:
        pickle_module.dump(obj, f, pickle_protocol)


def _save_to_path(obj, path, pickle_module, pickle_protocol):
    """`save` to a file name without losing what was there when pickling fails midway (upstream
    1.13 and torch measured: an existing checkpoint was left truncated, unloadable). An existing
    regular file is written beside itself and swapped in by ``os.replace`` (keeping its mode);
    a new file is written in place and removed on failure; anything else (a device such as
    /dev/null, a directory that takes no new files) is written in place as before."""
    target = os.path.realpath(path)  # a symbolic link keeps pointing at the new file
    if not os.path.isfile(target):
        existed = os.path.exists(target)
        try:
            with open(path, "wb") as fout:
                return save(obj, fout, pickle_module, pickle_protocol)
        except BaseException:
            if not existed and os.path.isfile(target):
                os.unlink(target)
            raise
    try:
        fd, temp = tempfile.mkstemp(prefix=os.path.basename(target) + ".",
                                    suffix=".saving", dir=os.path.dirname(target))
    except OSError:  # a directory that takes no new files: in place
        with open(path, "wb") as fout:
            return save(obj, fout, pickle_module, pickle_protocol)
    try:
        with os.fdopen(fd, "wb") as fout:
            save(obj, fout, pickle_module, pickle_protocol)
        shutil.copymode(target, temp)
        os.replace(temp, target)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


@functools.lru_cache(maxsize=None)
def _portable_pickler(base):
    """A subclass of the pickler class ``base`` that writes numpy arrays and scalars through
    names numpy 1.x and 2.x share (one class per ``base``).

    An array is ``numpy.ndarray((0,), "b")`` given numpy's own pickled state by
    ``ndarray.__setstate__``, which is what numpy's ``_reconstruct`` does under its private
    module name; a scalar is its 0-d array indexed by ``()``.
    """

    class _PortablePickler(base):
        def reducer_override(self, obj):
            if type(obj) is np.ndarray:
                return np.ndarray, ((0,), "b"), obj.__reduce__()[2]
            if isinstance(obj, np.generic):
                return operator.getitem, (np.asarray(obj), ())
            parent = getattr(super(), "reducer_override", None)  # cloudpickle's, say
            return NotImplemented if parent is None else parent(obj)

    return _PortablePickler


def load(f, map_location=None, pickle_module=pickle):
    """Unpickle an object written by ``save`` (here or by upstream MegEngine 1.x) from ``f``.

    ``f`` is a file name or a binary file object. ``map_location`` says where the loaded tensors
    go, as upstream:

    - ``None``: the device each tensor was saved from; a tensor saved under the default
      device's name (``"xpux:0"``) goes to this program's default device (set it before
      loading, as upstream asks: with ``set_default_device("cpu0")`` an upstream file runs on
      cpu0 also on a machine with a GPU);
    - a device name, e.g. ``"cpu0"``: every tensor goes there;
    - a dict ``{saved device: device}``, e.g. ``{"gpu0": "cpu0"}``: a tensor whose saved device
      is a key goes to its value, others stay where they were saved; names are compared as the
      devices upstream's name parser reads (streams left out: ``"gpu0:0"`` and ``"gpu0"`` are one
      key, ``"cpu:0"`` is ``"cpu0"``, ``"multithread4:1"`` is ``"cpu1"``; ``"gpux"`` is not
      ``"gpu0"``); a tensor saved under the default device's name (``"xpux:0"``: ``save``
      records each tensor under the name it was made with, as upstream) also matches the key
      of the device that name resolves to here (the default device: ``"cpu0"``, or ``"gpu0"``
      with a GPU and the default left at ``"xpux"``), and goes there when no key matches;
    - a callable ``fn(saved device) -> device``; it receives the saved logical name, such as
      ``"gpu0:0"`` or ``"xpux:0"``.

    numpy arrays in the object load as numpy arrays. A tensor saved on a device this machine
    lacks (a GPU) fails to load with a message that suggests ``map_location``.

    Torch tensors in the object (a `~megengine.module.pytorch.PyTorchModule`'s torch module, or
    any other) follow the same mapping, under megengine's names: a torch tensor saved on
    ``cuda:N`` is seen as saved on ``"gpuN:0"``, one saved on the CPU as ``"cpu0:0"``, and goes
    to ``cuda:M`` for ``"gpuM"`` and to the CPU for every CPU name. So a hybrid network trained
    on ``gpu0`` loads on a machine without a GPU with ``map_location="cpu0"``, and
    ``map_location="gpu1"`` moves both halves; a wrapper's own device follows, and its
    parameters are views of the loaded torch tensors again. (Torch tensors on other torch
    devices, such as ``mps``, load where torch puts them. With a ``pickle_module`` that has no
    ``Unpickler`` class, torch tensors load as torch would load them.)

    ``map_location`` is checked before anything loads: a device name that is malformed, or a
    single device this machine lacks (``"gpu0"`` without CUDA), raises a ``ValueError``.
    """
    if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__"):
        with open(f, "rb") as fin:
            return load(fin, map_location, pickle_module)
    if not hasattr(f, "read"):
        raise ArgumentKindError(
            f"load: f must be a file name or a readable binary file, got {type(f).__name__}"
        )
    mapper = _device_mapper(map_location)
    unpickler = getattr(pickle_module, "Unpickler", None)
    with _load_lock:
        previous = Tensor.dmap_callback
        Tensor.dmap_callback = staticmethod(mapper)
        try:
            if isinstance(unpickler, type):
                return _mapping_unpickler(unpickler)(f).load()
            return pickle_module.load(f)
        except (EOFError, pickle.UnpicklingError) as e:
            name = getattr(f, "name", None)
            raise type(e)(
                f"load: {'the data' if name is None else repr(name)} is not a complete file "
                f"written by mge.save or pickle ({e}): it may have been cut short (a save that "
                "was interrupted, a partial download) or be of another format (read a file of "
                "torch.save with torch.load)") from e
        finally:
            Tensor.dmap_callback = previous


def _device_key(name, what):
    """The device ``name`` names, as the text a dict ``map_location`` is matched by: its kind and
    number as upstream's name parser reads them ("cpu:0" and "cpu0:1" are "cpu0"; "gpux" stays
    "gpux", which is not "gpu0")."""
    try:
        if not isinstance(name, str):
            raise ValueError(f"a device name is a str, got {type(name).__name__}")
        kind, number = parse_device_name(name)
    except ValueError as e:
        # (an ArgumentError: upstream asserts a str and its parser raises RuntimeError)
        raise ArgumentError(f"load: invalid device {name!r} in {what}: {e}") from None
    return kind + number


def _saved_key(dev):
    """A saved tensor's device name as a dict ``map_location`` key (the text before ":" for a
    name upstream's parser would not read, which then matches no valid key)."""
    try:
        kind, number = parse_device_name(dev)
    except ValueError:
        return dev.split(":")[0]
    return kind + number


def _mapped_by_table(table, dev):
    """Where a dict ``map_location`` (``table``, by `_device_key`) sends a tensor saved on
    ``dev``. Upstream matches keys exactly; here a tensor saved on the default device's name
    (``"xpux:0"``, as `CompNode.logical_name` and upstream name default tensors) also goes where
    the key naming the device that name resolves to on this machine says (``{"cpu0": ...}``)."""
    key = _saved_key(dev)
    if key in table or not key.endswith("x"):
        return table.get(key, dev)
    here = _saved_device_here(dev)  # "xpux": this program's default device
    try:
        return table.get(canonical_device(here if here != dev else key), here)
    except (RuntimeError, ValueError):
        return here


def _device_mapper(map_location):
    """Turn ``map_location`` into a function: saved device name -> device name."""
    if map_location is None:
        return _saved_device_here
    if isinstance(map_location, str):
        if map_location in ("cpu", "gpu", "xpu"):
            # torch's spelling, which programs ported from torch pass (CREStereo's train.py:
            # map_location="cpu"); upstream's name parser wants an index, so take "any one"
            map_location += "x"
        _device_key(map_location, "map_location")
        try:  # every tensor goes there: a device this machine lacks fails now, not midway
            canonical_device(map_location)
        except (RuntimeError, ValueError) as e:
            raise ArgumentError(f"load: map_location={map_location!r} cannot be used here: {e}") \
                from None
        return lambda dev: map_location
    if isinstance(map_location, dict):
        table = {}
        for key, value in map_location.items():
            _device_key(value, "map_location's values")
            table[_device_key(key, "map_location's keys")] = value
        return lambda dev: _mapped_by_table(table, dev)
    if callable(map_location):
        return map_location
    raise ArgumentKindError(
        "load: map_location must be None, a device name, a dict {saved device: device} or a "
        f"callable, got {type(map_location).__name__}"
    )


# ----- torch tensors inside the object -----
#
# A torch storage pickles as `torch.storage._load_from_bytes(bytes)`, the bytes being a
# `torch.save` of the storage that carries its location tag ("cuda:0", "cpu"); torch's function
# loads them where they were saved. While `load` runs, the unpickler hands out a replacement that
# loads them through `torch.load(..., map_location=...)` with megengine's mapping instead, so the
# torch side of a network moves with the megengine side (and a missing GPU is reported with the
# megengine argument that fixes it). torch is imported only when the file holds torch objects.

@functools.lru_cache(maxsize=None)
def _mapping_unpickler(base):
    """A subclass of the unpickler class ``base`` that loads torch storages through megengine's
    device mapping (one class per ``base``)."""

    class _MappingUnpickler(base):
        def find_class(self, module, name):
            if module == "torch.storage" and name == "_load_from_bytes":
                return _load_torch_storage
            try:
                return super().find_class(module, name)
            except (AttributeError, ImportError) as e:
                if module.split(".")[0] != "megengine":
                    raise
                # an internal class of upstream's that this engine does not have
                raise pickle.UnpicklingError(
                    f"load: the file names {module}.{name}, an internal class of upstream "
                    f"MegEngine that this engine does not provide ({e}). Files of tensors, "
                    "state dicts, modules, optimizer states and TracedModules load; for other "
                    "objects, load the file in upstream and save the module's state_dict, "
                    "then build (or trace) the module here") from None

    return _MappingUnpickler


def _load_torch_storage(data):
    import torch

    return torch.load(io.BytesIO(data), map_location=_restore_torch_storage, weights_only=False)


def _megengine_name(location):
    """Megengine's logical name for a torch location tag, or None for devices it does not name."""
    if location == "cpu":
        return "cpu0:0"
    m = re.fullmatch(r"cuda:(\d+)", location)
    return f"gpu{m.group(1)}:0" if m else None


def _restore_torch_storage(storage, location):
    """torch.load's map_location while `load` runs: place one storage saved at ``location``."""
    from torch.serialization import default_restore_location

    saved = _megengine_name(location)
    if saved is None:
        return None  # mps, xpu, ...: torch restores it as it was saved
    mapper = Tensor.dmap_callback
    target = mapper(saved) if mapper is not None else saved
    try:
        device = canonical_device(target)
    except (RuntimeError, ValueError, TypeError) as e:
        example = "map_location='cpu0'"
        if saved.startswith("gpu"):
            example += f" or map_location={{{saved.split(':')[0]!r}: 'cpu0'}}"
        raise RuntimeError(
            f"load: a torch tensor saved on {location!r} (megengine's {saved!r}), e.g. inside a "
            f"PyTorchModule, cannot be placed on {target!r} here ({e}); pass map_location to "
            f"megengine.load, e.g. {example}"
        ) from None
    tag = "cpu" if device.startswith("cpu") else "cuda:" + device[3:]
    return default_restore_location(storage, tag)
