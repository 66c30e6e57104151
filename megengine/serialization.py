"""`save` and `load` in upstream MegEngine 1.x's pickle format; `load` can move tensors."""
import pickle
import re
import threading

from .core.tensor import Tensor

__all__ = ["save", "load"]

_DEVICE_NAME = re.compile(r"^(cpu|gpu|xpu|multithread)(\d+|x)(?::\d+)?$")
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
    """
    if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__"):
        with open(f, "wb") as fout:
            return save(obj, fout, pickle_module, pickle_protocol)
    if not hasattr(f, "write"):
        raise TypeError(
            f"save: f must be a file name or a writable binary file, got {type(f).__name__}"
        )
    pickle_module.dump(obj, f, pickle_protocol)


def load(f, map_location=None, pickle_module=pickle):
    """Unpickle an object written by ``save`` (here or by upstream MegEngine 1.x) from ``f``.

    ``f`` is a file name or a binary file object. ``map_location`` says where the loaded tensors
    go, as upstream:

    - ``None``: the device each tensor was saved from;
    - a device name, e.g. ``"cpu0"``: every tensor goes there;
    - a dict ``{saved device: device}``, e.g. ``{"gpu0": "cpu0"}``: a tensor whose saved device
      (the name before ``":"``) is a key goes to its value, others stay where they were saved;
    - a callable ``fn(saved device) -> device``; it receives the saved logical name, such as
      ``"gpu0:0"`` or ``"xpux:0"``.

    numpy arrays in the object load as numpy arrays. A tensor saved on a device this machine
    lacks (a GPU) fails to load with a message that suggests ``map_location``.
    """
    if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__"):
        with open(f, "rb") as fin:
            return load(fin, map_location, pickle_module)
    if not hasattr(f, "read"):
        raise TypeError(
            f"load: f must be a file name or a readable binary file, got {type(f).__name__}"
        )
    mapper = _device_mapper(map_location)
    with _load_lock:
        previous = Tensor.dmap_callback
        Tensor.dmap_callback = staticmethod(mapper)
        try:
            return pickle_module.load(f)
        finally:
            Tensor.dmap_callback = previous


def _check_device_name(name, what):
    if not isinstance(name, str) or not _DEVICE_NAME.match(name):
        raise ValueError(
            f"load: invalid device {name!r} in {what}; expected a name like 'cpu0', 'gpu0', "
            "'cpux' or 'xpux'"
        )


def _device_mapper(map_location):
    """Turn ``map_location`` into a function: saved device name -> device name."""
    if map_location is None:
        return lambda dev: dev
    if isinstance(map_location, str):
        _check_device_name(map_location, "map_location")
        return lambda dev: map_location
    if isinstance(map_location, dict):
        for key, value in map_location.items():
            _check_device_name(key, "map_location's keys")
            _check_device_name(value, "map_location's values")
        table = {key.split(":")[0]: value for key, value in map_location.items()}
        return lambda dev: table.get(dev.split(":")[0], dev)
    if callable(map_location):
        return map_location
    raise TypeError(
        "load: map_location must be None, a device name, a dict {saved device: device} or a "
        f"callable, got {type(map_location).__name__}"
    )
