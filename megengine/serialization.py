"""`save` and `load`: pickle objects holding Tensors; `load` can place tensors on other devices."""
import pickle
import re

from .core.tensor import Tensor
from .device import canonical_device

__all__ = ["save", "load"]

_DEVICE_NAME = re.compile(r"^(cpu|gpu|xpu)(\d+|x)(?::\d+)?$")


def save(obj, f, pickle_module=pickle, pickle_protocol=pickle.DEFAULT_PROTOCOL):
    """Pickle ``obj`` (a Module, a state dict, an Optimizer's state dict, ...) to ``f``.

    ``f`` is a file name or a binary file object. Tensors are stored as their value (a numpy
    array), device and name, so the file is a plain pickle that ``pickle.load`` also reads.
    Different Python versions may default to different pickle protocols: pass
    ``pickle_protocol`` explicitly to load the file with another Python.
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
    """Unpickle an object written by ``save`` from ``f`` (a file name or a binary file object).

    ``map_location`` says where the loaded tensors go:

    - ``None``: the device each tensor was saved from;
    - a device name, e.g. ``"cpu0"``: every tensor goes there;
    - a dict ``{saved device: device}``, e.g. ``{"gpu0": "cpu0"}``: tensors from a listed
      device are moved, others stay (``"gpux"``/``"cpux"``/``"xpux"`` keys match any index);
    - a callable ``fn(saved device name) -> device name``.

    numpy arrays in the object load as numpy arrays.
    """
    if isinstance(f, (str, bytes)) or hasattr(f, "__fspath__"):
        with open(f, "rb") as fin:
            return load(fin, map_location, pickle_module)
    if not hasattr(f, "read"):
        raise TypeError(
            f"load: f must be a file name or a readable binary file, got {type(f).__name__}"
        )
    mapper = _device_mapper(map_location)
    unpickler_base = getattr(pickle_module, "Unpickler", None)
    if unpickler_base is None:
        if map_location is not None:
            raise TypeError(
                f"load: pickle_module {getattr(pickle_module, '__name__', pickle_module)!r} has "
                "no Unpickler class, which map_location needs"
            )
        return pickle_module.load(f)
    return _unpickler(unpickler_base, mapper)(f).load()


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

        def mapped(dev):
            for key, value in map_location.items():
                if _matches(key, dev):
                    return value
            return dev

        return mapped
    if callable(map_location):
        return map_location
    raise TypeError(
        "load: map_location must be None, a device name, a dict {saved device: device} or a "
        f"callable, got {type(map_location).__name__}"
    )


def _matches(key, dev):
    """Whether dict key ``key`` names saved device ``dev`` ("gpux" names every GPU)."""
    key, dev = key.split(":")[0], dev.split(":")[0]
    if key == dev:
        return True
    kind, index = key[:3], key[3:]
    return index == "x" and (kind == "xpu" or kind == dev[:3])


def _unpickler(base, mapper):
    """An Unpickler class whose Tensors are placed by ``mapper``.

    A pickled Tensor is rebuilt as ``cls.__new__(cls)`` then ``__setstate__(state)``, with
    ``cls`` looked up by ``find_class``. To see the saved device before ``Tensor.__setstate__``
    puts the data there (it may be a GPU this machine lacks), ``find_class`` hands out a
    subclass of the Tensor class whose ``__setstate__`` rewrites the device, restores the real
    class, and then runs the real ``__setstate__``. (A Tensor class pickled as a plain value,
    not as an instance's class, therefore loads as that subclass.)
    """
    substitutes = {}

    def substitute(cls):
        sub = substitutes.get(cls)
        if sub is None:
            def __setstate__(self, state):
                state = dict(state)
                saved = str(state["device"])
                target = mapper(saved)
                try:
                    state["device"] = canonical_device(target)
                except RuntimeError as e:
                    raise RuntimeError(
                        f"load: a tensor saved on {saved!r} cannot be placed on {target!r} here "
                        f"({e}); pass map_location, e.g. map_location='cpu0'"
                    ) from None
                self.__class__ = cls
                cls.__setstate__(self, state)

            sub = substitutes[cls] = type(cls.__name__, (cls,), {"__setstate__": __setstate__,
                                                                 "__module__": cls.__module__})
        return sub

    class _Unpickler(base):
        def find_class(self, module, name):
            cls = super().find_class(module, name)
            if isinstance(cls, type) and issubclass(cls, Tensor):
                return substitute(cls)
            return cls

    return _Unpickler
