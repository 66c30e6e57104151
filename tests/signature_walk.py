"""Walks megengine's public callables and writes their signatures: upstream_signatures.json.

The same walk runs under upstream MegEngine and under this fork, so both sides are read alike.
The data file was written in two steps (the module list below is what was walked):

    # under upstream MegEngine 1.13.0 (its CPU wheel needs Python 3.10): every entry
    python tests/signature_walk.py /tmp/up.json
    # under the fork: keep the entries whose names the fork provides (names it lacks are
    # tests/test_public_names.py's concern), in the compact form of tests/upstream_signatures.json
    PYTHONPATH=. python tests/signature_walk.py --trim /tmp/up.json tests/upstream_signatures.json

An entry is ``"module:name"`` (a function or class; for a class its constructor's parameters) or
``"module:Class.method"``; its parameters are ``[name, kind]`` or ``[name, kind, default]``
with kinds PK (positional or keyword), PO (positional-only), KO (keyword-only), VP (``*args``)
and VK (``**kwargs``). A default that JSON cannot hold is ``{"ref": "module.name"}`` (the
object a module binds to that name), ``{"module": name}``, ``{"enum": str(member)}``,
``{"tuple": [...]}`` or ``{"repr": ...}``. Callables without a signature (C++ builtins) are
left out.
"""
import enum
import importlib
import inspect
import json
import sys

MODULES = """megengine megengine.functional megengine.functional.nn megengine.functional.elemwise
megengine.functional.math megengine.functional.tensor megengine.functional.loss
megengine.functional.vision megengine.functional.quantized megengine.functional.distributed
megengine.functional.debug_param megengine.functional.metric megengine.functional.utils
megengine.functional.inplace megengine.functional.external
megengine.module megengine.module.init megengine.module.qat megengine.module.quantized
megengine.optimizer megengine.autodiff megengine.amp megengine.jit megengine.random
megengine.distributed megengine.distributed.functional megengine.data megengine.data.dataset
megengine.data.sampler megengine.data.transform megengine.data.collator
megengine.quantization megengine.quantization.quantize megengine.quantization.observer
megengine.quantization.fake_quant megengine.quantization.utils megengine.hub
megengine.utils.module_stats megengine.utils.network megengine.utils.network_node
megengine.utils.comp_graph_tools megengine.utils.profiler megengine.utils.module_utils
megengine.traced_module megengine.serialization megengine.device megengine.logger
megengine.dtr megengine.config megengine.core.tensor.dtype megengine.version
megengine.experimental megengine.data.transform.vision.functional megengine.utils
megengine.utils.bn_fusion megengine.utils.dlpack megengine.utils.hook megengine.utils.naming
megengine.utils.tensor_sanity_check megengine.utils.deprecation megengine.utils.future
megengine.utils.max_recursion_limit megengine.utils.tuple_function
megengine.utils.persistent_cache megengine.utils.http_download
megengine.utils.profile_analyzer""".split()

KINDS = {"POSITIONAL_OR_KEYWORD": "PK", "POSITIONAL_ONLY": "PO", "KEYWORD_ONLY": "KO",
         "VAR_POSITIONAL": "VP", "VAR_KEYWORD": "VK"}
_SCALARS = (bool, int, float, str, type(None))


def default_entry(value):
    """A parameter's default as JSON: the value itself, or what names it."""
    if isinstance(value, _SCALARS) and value == value:  # NaN would not survive JSON
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, _SCALARS) for v in value):
        return {type(value).__name__: list(value)}
    if inspect.ismodule(value):
        return {"module": value.__name__}
    # upstream's enums are pybind11's; str() of both kinds is "Type.MEMBER"
    if isinstance(value, enum.Enum) or "pybind11" in repr(type(type(value))):
        return {"enum": str(value)}
    for modname in sorted(sys.modules):
        module = sys.modules[modname]
        if modname.startswith("megengine") and module is not None:
            for name, bound in list(vars(module).items()):
                if bound is value and not name.startswith("_"):
                    return {"ref": modname + "." + name}
    return {"repr": repr(value)}


def signature_entry(obj):
    """``obj``'s parameters as ``[name, kind(, default)]`` lists, or None without a signature.

    A class whose ``__new__`` only forwards ``*args, **kwargs`` hides its ``__init__`` from
    inspect (the fork's Tensor); its ``__init__`` is read then.
    """
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (ValueError, TypeError):
        return None
    if (inspect.isclass(obj) and [p.kind.name for p in params] == ["VAR_POSITIONAL", "VAR_KEYWORD"]
            and obj.__init__ is not object.__init__):
        params = list(inspect.signature(obj.__init__).parameters.values())[1:]
    out = []
    for p in params:
        entry = [p.name, KINDS[p.kind.name]]
        if p.default is not inspect.Parameter.empty:
            entry.append(default_entry(p.default))
        out.append(entry)
    return out


def _ours(obj):
    return (getattr(obj, "__module__", None) or "").startswith("megengine")


def _method_names(cls):
    """The methods a class defines itself (Tensor and Parameter: also those they inherit)."""
    whole_mro = cls.__name__ in ("Tensor", "Parameter")
    names = set()
    for klass in cls.__mro__ if whole_mro else (cls,):
        if not (_ours(klass) or klass.__name__ == "Tensor"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") and name not in ("__init__", "__call__"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value) or type(value).__name__ == "method_descriptor":
                names.add(name)
    return sorted(names)


def resolve(key):
    """The object an entry's key names (AttributeError/ImportError when it is missing)."""
    modname, _, path = key.partition(":")
    obj = importlib.import_module(modname)
    parts = path.split(".")
    for i, part in enumerate(parts):
        if i == len(parts) - 1 and inspect.isclass(obj):
            static = inspect.getattr_static(obj, part)
            # a staticmethod's function, not the bound method of a classmethod
            return static.__func__ if isinstance(static, (staticmethod, classmethod)) else \
                getattr(obj, part)
        obj = getattr(obj, part)
    return obj


def walk():
    """{key: signature entry} over MODULES' public callables (their methods once per class)."""
    out = {}
    seen = set()
    for modname in MODULES:
        try:
            module = importlib.import_module(modname)
        except ImportError:  # a module upstream's wheel cannot load without an extra package
            continue
        names = getattr(module, "__all__", None) or [n for n in dir(module)
                                                     if not n.startswith("_")]
        for name in names:
            try:
                obj = getattr(module, name, None)
            except Exception:  # noqa: BLE001 (a module property that needs a process group)
                continue
            if obj is None or inspect.ismodule(obj) or not callable(obj):
                continue
            if name in ("Tensor", "Parameter"):
                if modname != "megengine":
                    continue
            elif not _ours(obj):
                continue
            key = f"{modname}:{name}"
            out[key] = signature_entry(obj)
            if not inspect.isclass(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            for method in _method_names(obj):
                if not isinstance(inspect.getattr_static(obj, method), property):
                    out[f"{key}.{method}"] = signature_entry(resolve(f"{key}.{method}"))
    return {k: v for k, v in out.items() if v is not None}


def _provided(key):
    try:
        resolve(key)
    except (AttributeError, ImportError):
        return False
    return True


def main(argv):
    if argv[:1] == ["--trim"]:
        with open(argv[1]) as f:
            entries = json.load(f)
        how = ("upstream MegEngine 1.13.0 (CPU wheel, Python 3.10), walked by "
               "tests/signature_walk.py; the entries whose names the fork provides")
        lines = ['{"_how": ' + json.dumps(how)]
        for key in sorted(k for k in entries if _provided(k)):
            lines.append(f",\n{json.dumps(key)}: {json.dumps(entries[key], separators=(',', ':'))}")
        with open(argv[2], "w") as f:
            f.write("".join(lines) + "\n}\n")
    else:
        with open(argv[0], "w") as f:
            json.dump(walk(), f, indent=0, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
