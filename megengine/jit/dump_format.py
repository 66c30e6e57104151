"""The values of a dumped program's file (see `megengine.jit.dump` for the format): op state,
constants and metadata written as tagged JSON with arrays beside it (`_Writer`) and read back
(`_read`); classes and module-level functions travel by their import path. Also `DumpError`,
which every part of dump raises."""
import importlib
import types

import numpy as np

from ..core.tensor import Tensor
from ..device import _Device, canonical_device
from ._program import _DimExpr, _Ref, _host, _is_array
from .dump_devices import recorded_name


class DumpError(ValueError, RuntimeError):
    """A traced program, or a part of it, cannot be written to a file.

    Also a RuntimeError: upstream raises one when a program cannot be dumped (e.g. batch norm
    traced in training mode, which updates its running statistics in place), and programs
    catch that.
    """

    __module__ = "megengine.jit.dump"  # its public home, which re-exports it
    __firstlineno__ = None  # Python 3.13+'s inspect reads it in the file of __module__


class LoadError(ValueError, RuntimeError):
    """A file that is not a program this fork can read (not a dumped program at all, another
    format version, a damaged file).

    Also a RuntimeError: upstream's C++ loader raises one for a file it cannot read.
    """

    __module__ = "megengine.jit.dump"
    __firstlineno__ = None


class _Writer:
    def __init__(self):
        self.arrays = []
        self.qdtypes = []  # [index, scale info] of quantized arrays (.npy drops dtype metadata)

    def array(self, a):
        a = np.asarray(_host(a))  # (not ascontiguousarray: it makes a 0-d constant 1-d)
        info = _qinfo(a.dtype)
        if info is not None:
            self.qdtypes.append([len(self.arrays), self.value(info, "a quantized array")])
            a = a.view(np.dtype(a.dtype.str))
        self.arrays.append(a)
        return len(self.arrays) - 1

    def value(self, v, where):
        """``v`` as JSON; ``where`` names it in an error ("op #3 (Conv2d), attribute 'stride'")."""
        t = type(v)
        if v is None or t is bool or t is int or t is str:
            return v
        if t is _Device:  # an op's device: the device it resolves to, as text
            return str(v)
        if t is float:
            return {"float": repr(v)}  # repr round-trips, and keeps nan/inf out of bare JSON
        if t is complex:
            return {"complex": [repr(v.real), repr(v.imag)]}
        if t is tuple or t is list:
            return {t.__name__: [self.value(x, where) for x in v]}
        if t is dict:
            return {"dict": [[self.value(k, where), self.value(x, where)] for k, x in v.items()]}
        if t is slice:
            return {"slice": [self.value(x, where) for x in (v.start, v.stop, v.step)]}
        if v is Ellipsis:
            return {"ellipsis": True}
        if t is _Ref:
            return {"ref": v.slot, "raw": v.raw}
        if isinstance(v, np.dtype):
            info = _qinfo(v)
            if info is not None:  # a quantized dtype: its scale (zero point) lives in metadata
                return {"qdtype": [v.str, self.value(info, where)]}
            return {"dtype": v.str}
        if isinstance(v, np.generic):
            return {"scalar": self.array(np.asarray(v))}
        if _is_array(v):
            return {"array": self.array(v)}
        if type(v).__name__ == "RNG" and type(v).__module__ == "megengine.random.rng":
            # a random op's source (a traced draw's op also has ``start``, the state it drew
            # from, which `read_op` makes the loaded op's own generator: see _Draw.__copy__)
            gen = v._generator
            return {"rng": [None if gen is None else [type(gen.bit_generator).__name__,
                                                      gen.bit_generator.state],
                             recorded_name(v._device)]}
        if isinstance(v, Tensor):  # (in user_info, as upstream pickles it)
            return {"tensor": [self.array(v._data), recorded_name(v._device)]}
        if isinstance(v, (type, types.FunctionType, types.BuiltinFunctionType)) \
                and _importable(v):
            return {"type": _class_path(v)}  # a class or module-level function, by its name
        raise DumpError(
            f"dump: {where} holds a {type(v).__module__}.{type(v).__qualname__} object, not a "
            "value that a file can hold. Ops that call into Python objects (a PyTorchModule's "
            "torch module, a user-defined Function) cannot be dumped; keep them out of the "
            "dumped function, or replace them with megengine modules")

    def frozen(self, f, where):
        """A value in `_program._freeze`'s form (op state that refers to traced arrays)."""
        t = type(f)
        if t is _Ref:
            return self.value(f, where)
        if t is _DimExpr:  # a size computed from shapes (see jit.shape_guards)
            return {"dim": f.tree}
        if t is tuple and f and f[0] in (tuple, list):
            return {f[0].__name__: [self.frozen(x, where) for x in f[1]]}
        if t is tuple and f and f[0] is dict:
            return {"dict": [[self.value(k, where), self.frozen(x, where)] for k, x in f[1]]}
        if t is tuple and f and f[0] is slice:
            return {"slice": [self.frozen(x, where) for x in f[1:]]}
        return self.value(getattr(f, "array", getattr(f, "obj", f)), where)


def _qinfo(dtype):
    """The scale information of a quantized dtype (megengine.core.tensor.dtype), else None."""
    return (dtype.metadata or {}).get("mgb_dtype")


def _read(v, arrays):
    if not isinstance(v, dict):
        return v
    (tag, x), = v.items()
    if tag == "float":
        return float(x)
    if tag == "complex":
        return complex(float(x[0]), float(x[1]))
    if tag == "tuple":
        return tuple(_read(e, arrays) for e in x)
    if tag == "list":
        return [_read(e, arrays) for e in x]
    if tag == "dict":
        return {_read(k, arrays): _read(e, arrays) for k, e in x}
    if tag == "slice":
        return slice(*(_read(e, arrays) for e in x))
    if tag == "ellipsis":
        return Ellipsis
    if tag == "dtype":
        return np.dtype(x)
    if tag == "qdtype":
        return np.dtype(x[0], metadata={"mgb_dtype": _read(x[1], arrays)})
    if tag == "scalar":
        return arrays[x][()]
    if tag == "array":
        return arrays[x]
    if tag == "type":
        return _import(x)
    if tag == "rng":
        from ..random.rng import RNG
        # (the device as recorded; one this machine lacks gives the default device, as for a
        # tensor below: an op's random source follows the program, which `load` places)
        rng = RNG(device=x[1] if x[1] is None or _resolves(x[1]) else None)
        if x[0] is not None:
            bit_gen = getattr(np.random, x[0][0])()
            bit_gen.state = x[0][1]
            rng._generator = np.random.Generator(bit_gen)
        return rng
    if tag == "tensor":
        a, device = arrays[x[0]], x[1]
        return Tensor(a, dtype=a.dtype, device=device if _resolves(device) else None)
    raise LoadError(f"load: unknown value tag {tag!r} in the file")


def _read_frozen(v, arrays):
    """Op state that refers to traced arrays, back in `_program._freeze`'s form for `_thaw`."""
    if isinstance(v, dict):
        if "ref" in v:  # (two keys: the slot and whether the op holds its raw array)
            return _Ref(v["ref"], v["raw"])
        (tag, x), = v.items()
        if tag == "dim":
            from .shape_guards import tree_from_json
            return _DimExpr(tree_from_json(x))
        if tag in ("tuple", "list"):
            return (tuple if tag == "tuple" else list, tuple(_read_frozen(e, arrays) for e in x))
        if tag == "dict":
            return (dict, tuple((_read(k, arrays), _read_frozen(e, arrays)) for k, e in x))
        if tag == "slice":
            return (slice,) + tuple(_read_frozen(e, arrays) for e in x)
    return _read(v, arrays)


def _class_path(cls):
    return f"{cls.__module__}:{cls.__qualname__}"


def _importable(obj):
    """True when ``module:qualname`` names ``obj`` itself, so a loader can import it."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return False
    try:
        return _import(f"{module}:{qualname}") is obj
    except ValueError:
        return False


def _import(path):
    module, _, qualname = path.partition(":")
    try:
        mod = obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        obj = _in_table(mod, qualname)
        if obj is None:
            raise LoadError(f"load: the file names {path!r}, which cannot be imported here "
                            f"({e}); was it dumped by another version of megengine?") from e
    except ImportError as e:
        raise LoadError(f"load: the file names {path!r}, which cannot be imported here ({e}); "
                        "was it dumped by another version of megengine?") from e
    return obj


def _in_table(module, qualname):
    """A class a factory made and a module-level dict keeps (``megengine.core.ops.BINARY``
    holds ``Greater``, made by ``type()``): found by its name among the dict's values."""
    for table in list(vars(module).values()):
        if type(table) is dict:
            for v in table.values():
                if isinstance(v, type) and v.__qualname__ == qualname \
                        and v.__module__ == module.__name__:
                    return v
    return None


def _resolves(name):
    """Whether device ``name`` exists on this machine."""
    try:
        canonical_device(name)
    except (ValueError, RuntimeError):
        return False
    return True
