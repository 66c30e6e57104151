"""Writing upstream MegEngine's binary ``.mge`` format (FlatBuffers, file identifier ``mgv2``,
``model_version`` 2: what upstream 1.13's ``trace.dump`` writes by default), so that a model
traced here runs on upstream's runtimes (its ``load_and_run``, MegEngine Lite, its Python
``GraphInference``). ``trace.dump(file, dump_format="FBS_V2")`` writes it.

The program is written at upstream's operator granularity: the operators
`megengine.utils.network` gives a dumped program (a linear layer as MatrixMul and an ADD, a
reduction per axis, ...; `megengine.utils.network_node.graph_type` / ``graph_params``), each
as the operator upstream registers for it, with its parameter table (upstream's published
schema: ``schema_v2.fbs``, ``opr_param_defs.fbs``, ``dtype.fbs``; the field positions are
those `upstream_mge` reads). A reshape target computed from shapes (symbolic shapes) is
computed in the file too (`_target_shape`), so the file follows the input's batch; other
target shapes are the traced constants, and a scalar is a vector of one item, as in
upstream's graphs. What has no writer here (an operator not in `SUPPORTED`,
indexing with None, a dtype beyond float32/float16 and 8-32 bit integers and bool, a 4-bit
quantized one), or what upstream's operator would compute otherwise, raises
`DumpError` naming it, before anything is written. A value whose shape the data decides
(a cond_take's, a mask's) holds no shape in the file, and only operators whose writers take
no traced shape may read it (`_SHAPE_FREE`).

The FlatBuffers buffer is laid out front to back (`_Encoder`): each table's vtable just
before it, its strings, vectors and child tables after it; offsets point forward, and every
scalar sits at a multiple of its size from the start of the file (upstream verifies the
buffer with its size prefix, so alignment counts from there).

The writers, by operator family: `._base` (the encoder, values, the operators written one to
one: `_OPERATORS`, the graph being written, sizes computed from shapes, shared helpers),
`._basic` (basic operators upstream computes with several), `._indexing` (indexing, gather,
scatter, one_hot, cond_take, cumsum, sort, ...), `._vision` (warps, remap, ROI pooling,
interpolate, nms), `._norms` (fused normalizations, norms, losses, isinf / isnan),
`._layers` (convolutions of every rank, batch norm, deformable and local convolutions),
`._recurrent` (LSTM / RNN and their cells), `._testcases` (the test cases of ``input_data``:
upstream's ``mgbtest0`` layout); this module holds the tables of them
(`_EXPANSIONS`, `_COMPUTED`, `SUPPORTED`) and `write_upstream` / `upstream_bytes`.
"""
import pickle
import warnings

from ..dump_format import DumpError
from ..upstream_mge import _LAYOUT_OPTIONS, _OPTION_BITS
# (_Encoder, _Graph, _operator, _tensor and _type_id are imported from here by the tests too)
from ._base import (_EVERY_AXIS, _MAX_NDIM, _NO_AXIS, _OPERATORS, _WITH_COMP_NODE, _check,
                    _dtype, _Encoder, _Graph, _inferred_axis, _model_bytes, _operator, _refuse,
                    _target_shape, _tensor, _type_id, _user_stacklevel)
from ._basic import (_broadcast, _broadcast_as, _compute, _computed_target, _elemwise, _fill,
                     _leaky_relu, _linspace, _log_softmax, _prelu, _roll, _sizes, _split,
                     _stack, _topk, _where)
from ._indexing import (_SHAPE_FREE, _argsort_compute, _cond_take, _cumsum, _diag, _embedding,
                        _matinv, _non_zero, _one_hot, _scatter, _sort, _subtensor, _svd,
                        _take_along_axis)
from ._layers import (_batch_norm, _conv_bias, _convolution3d, _convolution_any,
                      _deformable_conv, _group_local, _matrix_mul)
from ._norms import (_compute_check, _cross_entropy, _log_sum_exp, _normalization, _p_norm,
                     _pair_loss)
from ._recurrent import _folded_constants, _recurrent_cell, _recurrent_stack
from ._testcases import assert_outputs, testcase_bytes
from ._vision import (_col2im, _cvt_color, _im2col, _interpolate, _nms, _perspective_points,
                      _roi_align, _roi_pooling, _sample)

__all__ = ["write_upstream", "SUPPORTED"]

# the writers of operators upstream computes with several (or written with their own
# checks), by graph type: writer(g, opr, ins, outs, params, device)
_EXPANSIONS = {
    # `_basic`, `_indexing`'s x[...] (index arrays are refused by `_bound` where not written)
    "LeakyRelu": _leaky_relu, "PRelu": _prelu, "LogSoftmax": _log_softmax, "Stack": _stack,
    "Split": _split, "Subtensor": _subtensor, "Sizes": _sizes, "Fill": _fill,
    "Broadcast": _broadcast, "SetSubtensor": _subtensor, "IncrSubtensor": _subtensor,
    "Roll": _roll, "Linspace": _linspace, "TopK": _topk, "Compute": _compute,
    "Elemwise": _elemwise, "Where": _where, "BroadcastAs": _broadcast_as,
    "IndexingSetMultiAxisVec": _subtensor, "IndexingIncrMultiAxisVec": _subtensor,
    "IndexingMultiAxisVec": _subtensor,
    # `_indexing`: gather, scatter, embedding, cond_take, cumsum, sorting, ...
    "TakeAlongAxis": _take_along_axis, "Scatter": _scatter, "Embedding": _embedding,
    "CondTake": _cond_take, "Cumsum": _cumsum, "ArgsortForward": _sort, "Diag": _diag,
    "MatrixInverse": _matinv, "SVD": _svd,
    # `_vision`
    "PerspectivePoints": _perspective_points, "Sample": _sample, "ROIAlignForward": _roi_align,
    "ROIPoolingForward": _roi_pooling, "Im2Col": _im2col, "Col2Im": _col2im,
    "ResizeForward": _interpolate,
    # `_norms`: normalizations and this fork's fused ops
    "Normalize": _normalization, "PNorm": _p_norm, "LogSumExp": _log_sum_exp,
    "CrossEntropy": _cross_entropy, "L1": _pair_loss, "Square": _pair_loss,
    "SmoothL1": _pair_loss, "BinaryCrossEntropy": _pair_loss,
    # `_layers`
    "ConvolutionForward": _convolution_any, "ConvolutionBackwardData": _convolution_any,
    "Convolution3DForward": _convolution3d, "Convolution3DBackwardData": _convolution_any,
    "ConvBiasForward": _conv_bias, "BatchNormForward": _batch_norm,
    "DeformableConvForward": _deformable_conv, "GroupLocalForward": _group_local,
    "MatrixMul": _matrix_mul, "BatchedMatrixMul": _matrix_mul,
    # `_recurrent`
    "RecurrentStack": _recurrent_stack, "RecurrentLayer": _recurrent_cell,
}
# this fork's Compute functions written by a writer of their own (`_compute` writes argmax
# and argmin)
_COMPUTED = {"_nms_keep": _nms, "_isinf": _compute_check, "_isnan": _compute_check,
             "_one_hot": _one_hot, "_argsort": _argsort_compute, "_non_zero": _non_zero,
             "_cvt_uint8": _cvt_color}
# what `trace.dump(dump_format="FBS_V2")` writes, by the graph type `megengine.utils.network`
# gives each operator
SUPPORTED = ("Host2DeviceCopy", "ImmutableTensor") + tuple(sorted({*_OPERATORS, *_EXPANSIONS}))


def write_upstream(net, metadata=None, testcases=None):
    """The bytes of upstream's ``.mge`` file of `megengine.utils.network.Network` ``net``;
    ``metadata``: upstream's metadata dict (``user_info``, ``graph_modified``,
    ``optimize_options``), or None for none; ``testcases``: graph.json's (`program_json`), whose
    checks of the outputs the model then holds (`._testcases`; its cases follow the model)."""
    from ...utils.network_node import graph_params, graph_type

    g = _Graph()
    ids = g.ids
    folded = _folded_constants(net)  # (constants written inside a recurrent stack's weight)
    for opr in net.all_oprs:
        t = graph_type(opr)
        outs = list(opr.outputs)
        device = getattr(outs[0], "device", None) if outs else None
        device = getattr(device, "logical_name", device)
        if t == "Host2DeviceCopy":
            v = outs[0]
            ids[id(v)] = k = g.var(v.name, v.shape)
            g.ops.append(_operator("Host2DeviceCopy", 2, (63, {}), [], [k], tensors=[
                _tensor(v.shape, v.dtype, device, f"input {v.name!r}", name=v.name)]))
            continue
        if t == "ImmutableTensor":
            v = outs[0]
            if id(v) not in folded:
                ids[id(v)] = g.const(opr.numpy(), device, v.name)
            continue
        if t not in _OPERATORS and t not in _EXPANSIONS:
            raise DumpError(
                f"trace.dump(dump_format='FBS_V2'): operator {opr.name!r} ({t}) has no writer "
                f"for upstream's format here (written: {', '.join(SUPPORTED)}); dump without "
                "dump_format to keep it in this fork's format")
        ins = list(opr.inputs)
        missing = [v.name for v in ins if id(v) not in ids and id(v) not in folded]
        if missing:  # pragma: no cover (Network lists operators in dependency order)
            raise DumpError(f"trace.dump(dump_format='FBS_V2'): {opr.name!r} reads {missing} "
                            "before they are computed")
        try:  # (the Network knows a var's dtype and shape from a zero-valued sample)
            outs[0].dtype
        except Exception as e:  # noqa: BLE001 (what the op raises on samples: no dump bug)
            _refuse(opr, f"it fails on the zero-valued samples the Network computes shapes "
                         f"with ({type(e).__name__}: {e}), as an index into a value whose "
                         "shape the data decides (a cond_take's, empty there) does")
        for v in outs:  # (dtypes the writer has no code for are refused before any use)
            _dtype(v.dtype, f"operator {opr.name!r}'s output")
            if len(v.shape) > _MAX_NDIM:
                _refuse(opr, f"its output has {len(v.shape)} axes, more than upstream's graphs "
                             f"hold ({_MAX_NDIM}): reshape to fewer axes before it")
        p = graph_params(opr)
        if g.dynamic and any(id(v) in g.dynamic for v in ins):  # (a cond_take's result)
            write = t in ("IndexingSetMultiAxisVec", "IndexingIncrMultiAxisVec")
            if t not in _SHAPE_FREE and not (write and id(ins[0]) not in g.dynamic) \
                    and not _target_follows(opr, t):
                _refuse(opr, f"its {t} reads a value whose shape the data decides (a "
                             "cond_take's), and its writer here takes the traced shape; "
                             "element-wise operators, casts, reductions, indexing, writes "
                             "through index arrays and concat of such values are written, "
                             "and any operator once the value has the program's shape again "
                             "(x + g.mean(1, keepdims=True) of a mask's g = x[:, m])")
            if not write:
                _mark_data_sized(g, t, p, ins, outs)
        if t in _EXPANSIONS:
            _EXPANSIONS[t](g, opr, ins, outs, p if isinstance(p, dict) else {}, device)
            continue
        _check(opr, t, p, ins)
        if (t == "Concat" and len(ins) == 1) or (  # (see `_Graph.concat`; a cast to the same
                t in ("TypeCvt", "Requantize")  # dtype, scale included: upstream's
                and _dtype(ins[0].dtype, "") == _dtype(outs[0].dtype, "")) or (  # TypeCvt::make
                t == "Reshape" and _same_shape_reshape(opr, g)):  # gives its input then too)
            ids[id(outs[0])] = ids[id(ins[0])]
            continue
        inputs = [ids[id(v)] for v in ins]
        if t == "Reduce" and p["axis"] == _EVERY_AXIS:  # (upstream's: a target shape input)
            inputs.append(g.shape_const([1], device, opr.name))
        elif t == "Reshape":
            inputs.append(_target_shape(g, opr, outs[0], device))
            p = dict(p, axis=p["axis"] if opr._dyn or _inferred_axis(opr) is not None
                     else _NO_AXIS)
        elif t == "AdaptivePoolingForward":
            inputs.append(g.shape_const(outs[0].shape[2:], device, opr.name))
        name, version, ptype, params = _OPERATORS[t]
        made = g.op(name, version, ptype, params(p, ins, outs), inputs,
                    [(v.name, v.shape) for v in outs],
                    comp_node=device if t in _WITH_COMP_NODE else None)
        for v, k in zip(outs, made):
            ids[id(v)] = k
    outs = ([ids[id(v)] for v in net.output_vars] if testcases is None
            else assert_outputs(g, net, testcases))
    more = None
    if metadata is not None:
        more = {7: ("table", {
            0: ("?", True), 1: ("?", bool(metadata.get("graph_modified", False))),
            2: ("Q", int(metadata.get("optimize_options", 0))),
            3: ("str", pickle.dumps(metadata.get("user_info"), protocol=4))})}
    return _model_bytes(g, outs, more)


def _mark_data_sized(g, t, p, ins, outs):
    """Mark the outputs of an operator of graph type ``t`` that reads a value whose shape the
    data decides with the axes whose sizes the data decides in them too (`_Graph.data_axes`):
    by the operator's shape rule where it is one of these, element-wise broadcasting (``h +
    g.mean(1, keepdims=True)`` of a mask's ``g = h[:, m]`` has ``h``'s shape) and a reduction
    (a sum of all: one item), else all of their axes. An output with none stays unmarked: its
    shape is the program's as traced, and so the writers after it may take it."""
    if t in ("Elemwise", "TypeCvt", "Identity"):
        y = outs[0]
        n, axes = len(y.shape), set()
        for i in range(n):  # (numpy's broadcasting: axes aligned from the last)
            data = fixed = False
            for v in ins:
                j = i - (n - len(v.shape))
                if j < 0:
                    continue
                if j in g.data_axes_of(v):
                    data = True
                elif v.shape[j] != 1:  # (a size of more than 1 there is the output's)
                    fixed = True
            if data and not fixed:
                axes.add(i)
        marked = {id(y): axes}
    elif t == "Reduce":
        x, y = ins[0], outs[0]
        if p["axis"] == _EVERY_AXIS:
            axes = set()
        else:
            axis = p["axis"] % len(x.shape)
            kept = len(y.shape) == len(x.shape)  # (else the axis is dropped)
            axes = {a if kept or a < axis else a - 1 for a in g.data_axes_of(x) if a != axis}
        marked = {id(y): axes}
    else:
        marked = {id(v): set(range(len(v.shape))) for v in outs}
    for k, axes in marked.items():
        if axes:
            g.dynamic.add(k)
            g.data_axes[k] = frozenset(axes)


def _same_shape_reshape(opr, g):
    """Whether reshape ``opr`` has a constant target equal to its input's shape: upstream's
    Reshape::make gives its input then, and its loader refuses a file holding such a Reshape
    ("got_type=Split expected_type=Reshape": M.MultiHeadAttention's biases, split from its
    packed weights and reshaped to their own shape, made its files unloadable there)."""
    x, y = opr.inputs[0], opr.outputs[0]
    return (not dict(opr._dyn or ()).get("shape") and id(x) not in g.dynamic
            and tuple(x.shape) == tuple(y.shape))


def _target_follows(opr, t):
    """Whether operator ``opr`` of graph type ``t`` (a Reshape, Fill or Broadcast) takes its
    target shape where the file runs (sizes computed from shapes, a Reshape's inferred axis, a
    shape input), so that it may read a value whose shape the data decides (``v.reshape(-1,
    1)``, ``F.ones(v.shape)`` of a cond_take's ``v``), as upstream's own dumps compute them."""
    frozen = dict(opr._dyn or ()).get("shape")
    if t == "Reshape":
        return frozen is not None or _inferred_axis(opr) is not None
    if t == "Fill":
        return frozen is not None
    if t == "Broadcast":  # (as `_basic._broadcast` takes its target)
        return len(opr.inputs) > 1 or _computed_target(opr)
    return False


def upstream_bytes(graph, w):
    """Upstream's ``.mge`` file of the program of ``graph`` and ``w``
    (`megengine.jit.dump.program_json`), as bytes."""
    from ...utils.network import Network
    from ..dump import in_memory

    # sizes the traced code turned into Python values (int(), float(), an index, text): this
    # fork's loaders check them (ShapeGuardError at other shapes), upstream's format cannot.
    # (Comparisons, e.g. the library's own checks of a layer's input, decide a branch the way
    # upstream's own dumps decide it, at trace time: not named)
    guards = [g for g in graph.get("shape_guards") or () if not g["kind"].startswith("a comp")]
    if guards:
        uses = "; ".join(f"{g['kind']} of a size at {g['where']} (traced {g['value']})"
                         for g in guards[:3])
        warnings.warn(
            f"trace.dump(dump_format='FBS_V2'): the traced code used sizes of its inputs as "
            f"Python values ({uses}{'; ...' if len(guards) > 3 else ''}), which the program "
            "holds as constants. This fork's format checks them when it runs (ShapeGuardError "
            "at other shapes); upstream's format has no such check, so upstream's runtime "
            "computes with the traced values at any input shape: run the file at the traced "
            "input shapes, or compute the value with ops (x.reshape(x.shape[0], -1), "
            "F.linspace(0, 1, n) * x.shape[1]) before tracing", stacklevel=_user_stacklevel())
    from ...functional.math import MatInv

    # (the Network's shapes come from zero samples, of which a matinv's matrices are singular)
    MatInv.singular_ok = True
    try:
        net = Network._of_program(*in_memory(graph, w))  # (no archive written and read back)
        meta = net.metadata
        if meta is not None:  # (the optimizer's options as upstream's bits: `upstream_mge` reads
            meta = dict(meta)  # them back into these names)
            bits = sum(1 << bit for bit, name in _OPTION_BITS.items() if meta.get(name))
            bits |= sum(layout << 32 for layout, name in _LAYOUT_OPTIONS.items() if meta.get(name))
            meta["optimize_options"] = bits
        tc = graph.get("testcases")
        model = write_upstream(net, meta, tc)
        return model if tc is None else testcase_bytes(model, graph, w.arrays)
    finally:
        MatInv.singular_ok = False
