"""Upstream's inference optimizer (``optimize_for_inference``) on the VarNodes of a loaded
program: which options exist and what each does here, and the float16 passes
(``enable_io16xc32``, ``enable_ioc16``) that rewrite the graph.

The float16 passes follow upstream's ``ConvertF32ToF16Pass``: a float32 input is fed as float32
and converted to float16 by a ``TypeCvt`` right after it; float32 constants are stored as
float16 (half the file); every float32 value an operator makes becomes float16; an output whose
dtype changed gets a ``TypeCvt`` back, so the program's outputs keep their dtypes.

- ``enable_ioc16``: the operators run on the float16 values (float16 storage and compute).
- ``enable_io16xc32``: values between operators are float16, each operator computes in float32
  (its float16 inputs widened, its results rounded to float16), as upstream's ``FLOAT32``
  compute mode of convolutions, matrix products and reductions. Elementwise operators and
  operators that only move elements (reshape, transpose, indexing, concat) run on the float16
  values directly: their result is the same one rounding of the exact value either way, so
  they need no conversions around them.

The other options choose memory layouts and fused kernels of upstream's C++ backends (ARM,
x86 AVX, CUDA tensor cores, OpenCL); they do not change values, and this engine has none of
those backends: they are accepted and recorded, with the reason in ``NO_EFFECT``.
"""
import copy

import numpy as np

from ..core import ops as _ops
from .network_node import ImmutableTensor, make_opnode

__all__ = ["NO_EFFECT", "FLOAT16", "OPTIONS", "check_options", "optimize_vars"]

# option -> why it changes nothing in this engine (docs/api/jit.rst lists the same)
_LAYOUT_WHY = ("a memory layout of upstream's {} kernels; this engine stores arrays as numpy/CuPy "
               "(NCHW) and runs convolutions on ATen, so there is nothing to convert")
NO_EFFECT = {
    "enable_hwcd4": _LAYOUT_WHY.format("OpenCL (NHWCD4)"),
    "enable_nchw4": _LAYOUT_WHY.format("CUDA int8 (NCHW4)"),
    "enable_nchw88": _LAYOUT_WHY.format("x86 AVX (NCHW88)"),
    "enable_nchw44": _LAYOUT_WHY.format("ARM (NCHW44)"),
    "enable_nchw44_dot": _LAYOUT_WHY.format("ARMv8.2 dot-product (NCHW44_DOT)"),
    "enable_nchw32": _LAYOUT_WHY.format("CUDA tensor-core int8 (NCHW32)"),
    "enable_chwn4": _LAYOUT_WHY.format("CUDA tensor-core (CHWN4)"),
    "enable_nchw64": _LAYOUT_WHY.format("CUDA int4 (NCHW64)"),
    "enable_fuse_conv_bias_nonlinearity": (
        "upstream fuses convolution, bias and activation into one ConvBias kernel with the same "
        "values; here each stays its own op (ATen's convolution, then numpy/CuPy elementwise)"),
    "enable_fuse_conv_bias_with_z": (
        "upstream adds a residual input inside its CUDA ConvBias kernel; no such kernel here"),
    "enable_fuse_preprocess": (
        "upstream fuses the uint8 image input's TypeCvt and layout change into its CUDA NCHW4 "
        "int8 kernels; no such kernels here"),
    "enable_fuse_grain": (
        "upstream's fusion of elementwise chains into JIT-compiled kernels; this engine runs "
        "each elementwise op on numpy/CuPy"),
    "enable_weight_preprocess": (
        "upstream transforms weights once at load time for its Winograd/im2col kernels; "
        "ATen's convolution takes the weights as they are"),
}
FLOAT16 = ("enable_io16xc32", "enable_ioc16")
LAYOUTS = tuple(k for k in NO_EFFECT if k in (
    "enable_hwcd4", "enable_nchw4", "enable_nchw88", "enable_nchw44", "enable_nchw44_dot",
    "enable_nchw32", "enable_chwn4", "enable_nchw64"))
OPTIONS = tuple(sorted(tuple(NO_EFFECT) + FLOAT16))


def check_options(options, where="optimize_for_inference"):
    """The options of ``options`` (a dict of upstream's keyword arguments) that are set, as
    {name: True}; an unknown name, two layouts or both float16 modes raise ValueError."""
    unknown = sorted(k for k in options if k not in OPTIONS)
    if unknown:
        raise ValueError(f"{where}: unknown options: {unknown}; the valid options are "
                         f"{list(OPTIONS)}")
    on = {k: True for k in OPTIONS if options.get(k)}
    layouts = [k for k in on if k in LAYOUTS]
    if len(layouts) > 1:
        raise ValueError(f"{where}: one layout at a time, got {layouts}")
    if all(k in on for k in FLOAT16):
        raise ValueError(f"{where}: enable_io16xc32 (float32 compute) and enable_ioc16 (float16 "
                         "compute) exclude each other; choose one")
    return on


def optimize_vars(dest_vars, options):
    """(new vars for ``dest_vars``, {id(old var): new var}) after the passes ``options`` (from
    `check_options`) ask for; the original graph is left unchanged."""
    if options.get("enable_io16xc32"):
        return _to_float16(dest_vars, float32_compute=True)
    if options.get("enable_ioc16"):
        return _to_float16(dest_vars, float32_compute=False)
    return list(dest_vars), {}


_F32, _F16 = np.dtype(np.float32), np.dtype(np.float16)
# operator types whose float16 result is the float32 result rounded once (one elementwise
# function of their inputs, or a selection/arrangement of input elements): io16xc32 runs them
# on float16 values without widening (numpy and CuPy compute float16 elementwise functions in
# float32 and round each result)
_EXACT_IN_FLOAT16 = frozenset({
    "Elemwise", "TypeCvt", "Reshape", "Dimshuffle", "Broadcast", "Concat", "Copy", "Identity",
    "Subtensor", "SetSubtensor", "IndexingMultiAxisVec", "IndexingSetMultiAxisVec",
    "MeshIndexing", "SetMeshIndexing", "BatchedMeshIndexing", "BatchedSetMeshIndexing",
    "GetVarShape", "CondTake", "IndexingOneHot", "AxisAddRemove", "Split"})


def _is_f32(v):
    return v.dtype == _F32 and getattr(v.dtype, "metadata", None) is None


def _cast(v, dtype, name, cache):
    """A TypeCvt of ``v`` to ``dtype`` (one per var and dtype)."""
    key = (id(v), dtype)
    if key not in cache:
        node = make_opnode(_ops.AsType(dtype), None, [v], [], 1, v._device, name, [name])
        cache[key] = node.outputs[0]
    return cache[key]


def _to_float16(dest_vars, float32_compute):
    from .network import get_oprs_seq
    mode = "enable_io16xc32" if float32_compute else "enable_ioc16"
    new = {}  # id(old var) -> its var in the float16 graph
    casts = {}
    for opr in get_oprs_seq(list(dest_vars), False, False):
        if opr._provides_input:  # upstream: the input stays float32, a TypeCvt follows it
            v = opr.outputs[0]
            if _is_f32(v):
                new[id(v)] = _cast(v, _F16, f"{v.name}_f16", casts)
            continue
        if isinstance(opr, ImmutableTensor):
            v = opr.outputs[0]
            if _is_f32(v):  # stored as float16: the file's parameters take half the bytes
                node = ImmutableTensor(np.asarray(v.numpy()).astype(_F16), opr.name, v._device)
                node._graph = opr._graph
                node.outputs[0].name = v.name
                new[id(v)] = node.outputs[0]
            continue
        ins = [new.get(id(v), v) for v in opr.inputs]
        dyn_vars = [new.get(id(v), v) for v in opr._dyn_vars]
        op, retyped = copy.copy(opr._op), False
        if opr.type == "TypeCvt" and isinstance(op, _ops.AsType) and np.dtype(op.dtype) == _F32:
            op.dtype, retyped = _F16, True  # upstream: a conversion to float32 converts to
            # float16 instead
        elif float32_compute and opr.type not in _EXACT_IN_FLOAT16:
            ins = [_cast(v, _F32, f"{v.name}_f32", casts) if v.dtype == _F16 else v
                   for v in ins]
        changed = retyped or any(
            a is not b for a, b in zip(ins + dyn_vars, opr.inputs + opr._dyn_vars))
        if changed:
            node = make_opnode(op, opr._dyn, ins, dyn_vars, len(opr.outputs),
                               opr.outputs[0]._device, opr.name, [v.name for v in opr.outputs])
            node._multi = getattr(opr, "_multi", len(opr.outputs) != 1)
            outs = node.outputs
        else:
            outs = opr.outputs
        for old, v in zip(opr.outputs, outs):
            try:
                is32 = _is_f32(v)
            except Exception as e:  # noqa: BLE001 (the op's own error, named with the option)
                raise ValueError(f"{mode}: operator {opr.name!r} ({opr.type}) cannot run on "
                                 f"float16 values ({type(e).__name__}: {e}); dump without "
                                 f"{mode}") from e
            if is32:  # made in float32 (by float32 compute, or an op that makes float32)
                v = _cast(v, _F16, f"{v.name}_f16", casts)
            if v is not old:
                new[id(old)] = v
    outs = []
    for v in dest_vars:
        u = new.get(id(v), v)
        if u.dtype != v.dtype:  # upstream's endpoints keep their dtypes
            name = v.name
            u.name = f"{name}_f16" if u.name == name else u.name
            u = _cast(u, v.dtype, name, casts)
            new[id(v)] = u
        outs.append(u)
    return outs, new
