"""The names and call signatures of the real CuPy, recorded in cupy_signatures.json, so the simulated CuPy refuses a name CuPy lacks and an argument list CuPy's function would refuse.

``generate(cupy)`` reads them from an installed CuPy (no GPU needed); ``python
tests/simcuda/api_check.py --write-table`` writes the file, and the check compares the file
with the installed CuPy on every run. `fake_cupy` loads the file (`load`) and checks each call
of a namespace function and of an ndarray method against it (`binder`). A signature is stored
without defaults (``"(a, axis=None, *, out=None)"``: the names, kinds and which have a default),
enough to decide whether a call fits; a function whose signature cannot be read, and numpy's
functions CuPy re-exports (their signatures follow the installed numpy), are not checked.
"""
import inspect
import json
from pathlib import Path

__all__ = ["generate", "load", "binder", "PATH", "SPACES"]

PATH = Path(__file__).with_name("cupy_signatures.json")
SPACES = ("", "linalg", "fft", "random")  # cupy, cupy.linalg, cupy.fft, cupy.random


def _text(sig):
    """``sig`` with every default replaced by None, as source text: "(a, b=None, *, c=None)"."""
    parts, star_done, slash_pending = [], False, False
    for p in sig.parameters.values():
        if p.kind == p.POSITIONAL_ONLY:
            slash_pending = True
        elif slash_pending:
            parts.append("/")
            slash_pending = False
        if p.kind == p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind == p.VAR_POSITIONAL:
            parts.append("*" + p.name)
            star_done = True
        elif p.kind == p.VAR_KEYWORD:
            parts.append("**" + p.name)
        else:
            parts.append(p.name + ("=None" if p.default is not p.empty else ""))
    if slash_pending:
        parts.append("/")
    return "(" + ", ".join(parts) + ")"


def generate(cupy):
    """{"version", "spaces": {space: {"names": [...], "signatures": {name: text}}},
    "ndarray": {"names": [...], "signatures": {...}}} read from the installed ``cupy``."""
    from simcuda.api_check import signature_of

    def readable(obj, method=False):
        sig = signature_of(obj)
        if sig is None:
            return None
        params = list(sig.parameters.values())
        if method and params and params[0].name == "self":
            sig = sig.replace(parameters=params[1:])
        kinds = {p.kind for p in sig.parameters.values()}
        if inspect.Parameter.VAR_POSITIONAL in kinds and len(sig.parameters) <= 2:
            return None  # (*args, **kwargs): says nothing
        return _text(sig)

    table = {"version": cupy.__version__, "spaces": {}, "ndarray": {}}
    for space in SPACES:
        module = cupy if not space else getattr(cupy, space)
        names = sorted(n for n in dir(module) if not n.startswith("_"))
        signatures = {}
        for name in names:
            value = getattr(module, name)
            # ufuncs: fake_cupy applies CuPy's rule; numpy's own functions that CuPy re-exports
            # (broadcast_shapes, promote_types, ...) follow the installed numpy, not CuPy
            if callable(value) and not isinstance(value, type) and \
                    type(value).__name__ != "ufunc" and \
                    not (getattr(value, "__module__", None) or "").startswith("numpy"):
                text = readable(value)
                if text is not None:
                    signatures[name] = text
        table["spaces"][space] = {"names": names, "signatures": signatures}
    names = sorted(n for n in dir(cupy.ndarray) if not n.startswith("__"))
    signatures = {}
    for name in names:
        value = getattr(cupy.ndarray, name)
        if callable(value) and not isinstance(value, type):
            text = readable(value, method=True)
            if text is not None:
                signatures[name] = text
    table["ndarray"] = {"names": names, "signatures": signatures}
    return table


def load():
    """The recorded table, or None when the file is absent."""
    if not PATH.exists():
        return None
    return json.loads(PATH.read_text())


def write(table):
    PATH.write_text(json.dumps(table, indent=0, sort_keys=True) + "\n")


def binder(text, name):
    """A function ``check(args, kwargs)`` raising CuPy's TypeError when a call does not fit the
    recorded signature ``text`` of ``name``."""
    namespace = {}
    exec(f"def {name.replace('.', '_')}{text}: pass", namespace)
    sig = inspect.signature(namespace[name.replace(".", "_")])

    def check(args, kwargs):
        try:
            sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{name}() {e} [simulated CUDA: CuPy's signature is {name}{text}]") \
                from None
    return check
