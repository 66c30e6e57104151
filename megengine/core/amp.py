"""The autocast state (upstream's ``megengine.core.tensor.amp``) and the casts that the ops
upstream's amp covers apply under it: linear and the 2-d convolutions call `cast_for_compute`,
and `dispatch.apply` casts the inputs of the ops whose class sets ``autocast`` (`_cast_inputs`,
as upstream's dispatcher does); `megengine.amp` is the user-facing side. Kept in core so that
functional code reads it without importing upward."""
import contextlib
import functools
import sys

import numpy as np

from . import dispatch
from ._config import PropertyModule
from .dtype_rules import ArgumentKindError, ArgumentTypeError

_enabled = False
_high_prec_dtype = "float32"
_low_prec_dtype = "float16"


# the precisions upstream's autocast accepts (its setters refuse any other, float64 too)
_PREC_DTYPES = ("float16", "bfloat16", "float32")


def _engine_dtype(name, which):
    """The numpy dtype an op computes in for a precision checked by `_check_prec_dtype`;
    bfloat16 (no numpy dtype) is refused here, at the first engine op that would use it."""
    if _dtype_name(name) == "bfloat16":
        raise TypeError(
            f"autocast: {which}='bfloat16' has no engine dtype (numpy has no bfloat16): only "
            "a PyTorchModule runs under low_prec_dtype='bfloat16'; for megengine's own ops "
            f"use {which}='float16' or 'float32'")
    return np.dtype(_dtype_name(name))


def _check_prec_dtype(dtype, which, error=ArgumentTypeError):
    """Refuse a ``low_prec_dtype`` or ``high_prec_dtype`` upstream refuses: anything but
    float16, bfloat16 and float32 (bfloat16 serves PyTorchModule calls, see `torch_autocast`;
    megengine's ops refuse it in `_engine_dtype`)."""
    if _dtype_name(dtype) not in _PREC_DTYPES:
        # (upstream's autocast fails in its C++ setter: RuntimeError; its module's setters
        # assert: the callers pick the error that is also that)
        raise error(
            f"autocast: {which}={dtype!r} is not a precision autocast computes in: use "
            "'float16' or 'float32' (upstream accepts 'float16', 'bfloat16' and 'float32'; "
            "numpy has no bfloat16, so only a PyTorchModule runs under "
            "low_prec_dtype='bfloat16')")


def cast_for_compute(*tensors):
    """Under autocast, the tensors cast to the low-precision dtype (for speed and memory):
    floating ones and, as upstream's autocast casts every input of the ops that compute in
    low precision (upstream 1.13 measured: ``int32 @ float32``, ``int8 @ int8``, a convolution
    or ``linear`` of int or bool operands and ``batch_norm`` of an int input give float16),
    integer and bool ones; ``None`` and complex tensors pass unchanged. Without autocast: the
    tensors as given.

    The cast is an op, so gradients flow back through it and arrive at float32 parameters as
    float32: the parameters stay float32 master weights.
    """
    if not _enabled:
        return tensors
    dtype = _engine_dtype(_low_prec_dtype, "low_prec_dtype")
    _refuse_complex_with_real(tensors)
    return tuple(t if t is None or not _casts_low(t.dtype, dtype) else t.astype(dtype)
                 for t in tensors)


def _casts_low(dtype, low):
    """Whether autocast casts an input of ``dtype`` to the low precision dtype ``low``: every
    real dtype but ``low`` itself (quantized ones, which carry metadata, never)."""
    return dtype.kind in "fiub" and dtype != low and dtype.metadata is None


def _refuse_complex_with_real(tensors):
    """A complex operand beside a real floating one, where autocast computes in the low
    precision dtype. torch's autocast casts only the real operand (complex tensors are not
    eligible), and its matmul then refuses the mixed dtypes (torch 2.13 measured, float32 or
    float16 with complex64). Here the product would promote to complex anyway, so the cast
    would only round the real operand: refused as torch does, saying how to get the product."""
    kinds = {t.dtype.kind for t in tensors if t is not None}
    if "c" in kinds and "f" in kinds:
        real = next(t.dtype for t in tensors if t is not None and t.dtype.kind == "f")
        cplx = next(t.dtype for t in tensors if t is not None and t.dtype.kind == "c")
        raise TypeError(
            f"autocast: a {real} operand with a {cplx} one; autocast computes this op in "
            f"{_low_prec_dtype}, which has no complex form (torch's autocast refuses the pair "
            f"too). Cast the real operand to {cplx} first (x.astype('{cplx}')), or compute "
            "this op outside autocast (amp.autocast(enabled=False))")


def cast_for_precision(*tensors):
    """Under autocast, floating tensors cast to the high-precision dtype (for ops that need
    range: reductions, normalisation, losses)."""
    if not _enabled:
        return tensors
    dtype = _engine_dtype(_high_prec_dtype, "high_prec_dtype")
    return tuple(t if t is None or t.dtype.kind != "f" or t.dtype == dtype else t.astype(dtype)
                 for t in tensors)


def _cast_inputs(op, inputs):
    """`dispatch.apply`'s hook while autocast is on, for an op whose class sets ``autocast``:
    upstream's dtype-promote rules. "high" (exp, log, sqrt, true division, pow, layer norm, ...):
    floating inputs to the high precision dtype, so float16 operands give float32 (integer ones
    compute in float32 anyway); "low" (the ``@`` operator's matrix product): every real input
    to the low precision dtype, integers and bools too (`cast_for_compute`)."""
    if op.autocast == "high":
        return cast_for_precision(*inputs)
    if all(t.ndim == 1 for t in inputs):  # two vectors: upstream's dot, which it leaves alone
        return inputs
    return cast_for_compute(*inputs)


def autocasts(op):
    """Whether `dispatch.apply` casts ``op``'s inputs now (autocast is on and covers the op)."""
    return dispatch._autocast_hook is not None and op.autocast is not None


def promoted_with_inputs(op, out, *inputs):
    """``out`` of ``op`` (computed in high_prec_dtype under autocast) in the dtype upstream
    gives a function it composes of float functions and its inputs' own values (logsumexp
    adds the input's max back, logsoftmax subtracts from the input): high_prec_dtype promoted
    with the inputs' dtypes, so a float32 input under ``high_prec_dtype="float16"`` gives
    float32 (upstream 1.13 measured). Without autocast: ``out``."""
    if not autocasts(op):
        return out
    from .dtype_rules import promote_types

    dtype = out.dtype
    for t in inputs:
        if t.dtype.kind == "f":
            dtype = promote_types(dtype, t.dtype)
    return out if dtype == out.dtype else out.astype(dtype)


def not_covered(func):
    """Decorate a function that upstream runs as one op its autocast has no rule for (multi-head
    attention, Elemwise's FAST_TANH): it runs with autocast off, so its result keeps its inputs'
    dtype, although the ops it is composed of here (matmul, division) are ones autocast covers."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if not _enabled:
            return func(*args, **kwargs)
        return run_uncovered(func, *args, **kwargs)

    return wrapper


def run_uncovered(func, *args, **kwargs):
    """``func(*args, **kwargs)`` with autocast off, and on again after (also when it raises);
    autocast is on when this is called (`not_covered`, `dispatch`'s recorded gradients)."""
    _set_amp_dtype_autocast(False)
    try:
        return func(*args, **kwargs)
    finally:
        _set_amp_dtype_autocast(True)


def torch_autocast(device_type):
    """A context that runs torch code under ``torch.autocast(device_type, low_prec_dtype)``
    while megengine's autocast is on, or does nothing. Only the PyTorch bridge calls it (torch
    is loaded there)."""
    if not _enabled:
        return contextlib.nullcontext()
    import torch
    dtype = getattr(torch, str(_low_prec_dtype), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"autocast: low_prec_dtype={_low_prec_dtype!r} is not a torch floating "
                        "dtype (use 'float16' or 'bfloat16')")
    return torch.autocast(device_type, dtype=dtype)


def torch_outputs(outs):
    """Under autocast, torch outputs in a dtype numpy cannot hold (bfloat16) become float32,
    through a differentiable torch cast, so they can cross into megengine."""
    if not _enabled:
        return outs
    return [o.float() if o.dtype.is_floating_point and o.dtype.itemsize == 2
            and str(o.dtype) == "torch.bfloat16" else o for o in outs]


def _dtype_name(value):
    try:
        return np.dtype(value).name
    except TypeError:  # "bfloat16" has no numpy dtype; the name is kept as upstream spells it
        return str(value).lower()


# Upstream's `core2` accessors of the autocast state (its conftest and amp tests read them).
def _get_amp_dtype_autocast():
    return bool(_enabled)


def _set_amp_dtype_autocast(enabled):
    global _enabled
    _enabled = bool(enabled)
    dispatch._autocast_hook = _cast_inputs if _enabled else None


def _get_amp_high_prec_dtype():
    return _dtype_name(_high_prec_dtype)


def _set_amp_high_prec_dtype(dtype):
    global _high_prec_dtype
    _check_prec_dtype(dtype, "high_prec_dtype", ArgumentKindError)
    _high_prec_dtype = _dtype_name(dtype)


def _get_amp_low_prec_dtype():
    return _dtype_name(_low_prec_dtype)


def _set_amp_low_prec_dtype(dtype):
    global _low_prec_dtype
    _check_prec_dtype(dtype, "low_prec_dtype", ArgumentKindError)
    _low_prec_dtype = _dtype_name(dtype)


class AmpStateModule(PropertyModule):
    """The class of the modules that show the autocast state as properties, as upstream's
    ``megengine.core.tensor.amp`` and ``megengine.amp`` do (``amp.enabled = True``)."""

    enabled = property(lambda mod: _get_amp_dtype_autocast(),
                       lambda mod, value: _set_amp_dtype_autocast(value),
                       doc="Whether autocast is on (global).")
    low_prec_dtype = property(
        lambda mod: _get_amp_low_prec_dtype(), lambda mod, value: _set_amp_low_prec_dtype(value),
        doc="The dtype autocast computes matmul/linear/conv in (default float16).")
    high_prec_dtype = property(
        lambda mod: _get_amp_high_prec_dtype(),
        lambda mod, value: _set_amp_high_prec_dtype(value),
        doc="The dtype autocast keeps for precision (default float32).")


sys.modules[__name__].__class__ = AmpStateModule
