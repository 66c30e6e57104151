"""Upstream's `megengine.core._imperative_rt.core2`: `apply(op, *tensors)` returning a tuple,
`sync`, `Tensor` and `TensorWeakRef`, on this engine's one dispatcher."""
import weakref

from .. import _trace_option, dispatch
from ..tensor import Tensor
from ...device import _full_sync
from .._config import get_option, set_option  # noqa: F401  upstream's C++ exports them here
from ..amp import (_get_amp_dtype_autocast, _get_amp_high_prec_dtype,  # noqa: F401
                   _get_amp_low_prec_dtype, _set_amp_dtype_autocast,
                   _set_amp_high_prec_dtype, _set_amp_low_prec_dtype)

__all__ = ["apply", "sync", "full_sync", "Tensor", "TensorWeakRef", "create_complex",
           "config_async_level", "get_async_level", "get_option", "set_option", "push_scope",
           "pop_scope"]


_OpDef = None


def apply(op, *tensors):
    """Run ``op`` on ``tensors``; always returns a tuple of Tensors, as upstream's does
    (``(y,) = apply(Elemwise(mode="add"), a, b)``).

    ``op`` is one of upstream's op descriptors (`megengine.core.ops.builtin`), lowered onto
    this engine's ops so that autodiff, tracing and devices work as for any other op, or an
    engine op (`megengine.core.Op`) applied through the dispatcher as it is.
    """
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            if isinstance(t, _trace_option.Shape):  # x.shape standing for upstream's shape
                tensors = tensors[:i] + (t.astype("int32"),) + tensors[i + 1:]  # Tensor
                continue
            raise TypeError(
                f"apply({op!r}, ...): input {i} is a {type(t).__name__}, not a Tensor; wrap "
                "values with megengine.Tensor(...) first"
            )
    global _OpDef
    if _OpDef is None:  # the descriptor module loads on first use (see lazy_module)
        from .opdef import OpDef as _OpDef

    if isinstance(op, _OpDef):
        record = getattr(dispatch._trace_hook, "record_opdef", None)
        if record is not None:  # trace_module records the descriptor as one Apply step
            return record(op, tensors, _lower)
        return _lower(op, tensors)
    if isinstance(op, dispatch.Op):
        out = dispatch.apply(op, *tensors)
        return out if isinstance(out, tuple) else (out,)
    raise TypeError(
        f"apply: expected an op descriptor from megengine.core.ops.builtin (e.g. "
        f"Elemwise(mode='add')) or a megengine.core.Op, got {type(op).__name__}"
    )


def _lower(op, tensors):
    return op._lower(*[t if type(t).__module__.startswith("megengine.") else _plain(t)
                       for t in tensors])


def _plain(t):
    """``t``, an instance of a user's Tensor subclass, as an engine Tensor through a recorded
    identity op (a copy: autodiff and tracing follow it as any op).

    Upstream's ``apply`` runs the op in C++ and never calls the inputs' Python methods. The
    descriptors here are lowered onto Python code that uses Tensor's operators and methods,
    which a subclass may override, often with ``_elwise``/``apply`` themselves (MegEngine/invis
    defines ``__add__`` as ``_elwise(x, y, mode=ADD)``, which would call back forever)."""
    from .. import ops as _engine_ops

    return dispatch.apply(_engine_ops.Identity(), t)


def sync():
    """Wait until queued work has finished (numpy runs at once; CUDA devices are synchronised)."""
    _full_sync()


full_sync = sync


class TensorWeakRef:
    """A weak reference to a Tensor: calling it gives the Tensor, or None once it is freed."""

    __slots__ = ("_ref",)

    def __init__(self, tensor):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"TensorWeakRef: expected a Tensor, got {type(tensor).__name__}")
        self._ref = weakref.ref(tensor)

    def __call__(self):
        return self._ref()


def create_complex(real, imag):
    """The complex tensor ``real + 1j * imag`` (`megengine.functional.complex`)."""
    from ...functional import complex as _complex  # functional sits above core: loaded on use

    return _complex(real, imag)


def config_async_level(level):
    """Upstream's setter behind ``megengine.config.async_level``: 0, 1 or 2. Upstream's C++
    check raises RuntimeError for another value, so this one does too (the Python-level
    ``megengine.config.async_level = 3`` keeps its ValueError)."""
    from .. import _config

    try:
        _config._set_async_level(None, level)
    except ValueError as exc:
        raise RuntimeError(str(exc).replace("megengine.config.async_level",
                                            "config_async_level")) from None


def get_async_level():
    """The level ``config_async_level`` set (``megengine.config.async_level``)."""
    from .. import _config

    return _config._get_async_level(None)


# Upstream's named scopes around ops (training scripts wrap gradient clipping in them): a stack
# of names, shown as spans in a running `megengine.utils.profiler.Profiler`'s trace
_scopes = []


def _profiler_scope(phase, name):
    import sys  # the profiler sits above core: reached only if a program loaded it

    profiler = getattr(sys.modules.get("megengine.utils.profiler"), "_running", None)
    if profiler is not None:
        profiler._scope(phase, name)


def push_scope(name):
    """Open the scope ``name`` (upstream's ``push_scope(arg0: str)``): a span in the profile."""
    if not isinstance(name, str):
        raise TypeError(f"push_scope(name): name must be a str, got {type(name).__name__}")
    _scopes.append(name)
    _profiler_scope("B", name)


def pop_scope(name):
    """Close the innermost scope, which must be ``name``; otherwise RuntimeError (as upstream's
    assertion), leaving the scopes as they were."""
    if not _scopes or _scopes[-1] != name:
        open_ = repr(_scopes[-1]) if _scopes else "none"
        raise RuntimeError(f"pop_scope({name!r}): the innermost open scope is {open_}; close "
                           "scopes in the reverse order of push_scope")
    _scopes.pop()
    _profiler_scope("E", name)


# Upstream's switches for dynamic tensor rematerialization (`_drop`) and host swapping
# (`_swap_out`). This engine keeps every value resident (`Tensor._drop()`/`_swap_out()` are
# accepted without effect, as `megengine.dtr`), so the flags are kept for programs that set
# them and change nothing.
_swap_flag = False
_drop_flag = False


def _set_swap_flag(enable):
    global _swap_flag
    _swap_flag = bool(enable)


def _set_drop_flag(enable):
    global _drop_flag
    _drop_flag = bool(enable)


def _get_swap_flag():
    return _swap_flag


def _get_drop_flag():
    return _drop_flag


def _get_convert_inputs():
    """Whether ops convert Python scalars and numpy arrays among their inputs to Tensors:
    always, here (upstream can switch it off for speed; this engine has no such switch)."""
    return True
