"""Writers of convolutions and batch norm: convolutions of every rank and transposed ones
(ConvolutionForward, ConvolutionBackwardData, Convolution3DBackwardData), the 3-d
convolution, quantized convolutions (ConvBiasForward), batch norm of any input, deformable
convolution and local convolution (GroupLocal)."""
import numpy as np

from ._base import (_NO_AXIS, _convolution, _dtype, _float32_only, _float32_values,
                    _graph_type_of, _matmul, _refuse)


# --------------------------------------------------------------------------------------------
# convolutions of every rank (the 3-d and quantized ones too), batch norm of any input,
# deformable and local convolutions
# --------------------------------------------------------------------------------------------
def _grouped_weight(g, w, groups, rank, device, name):
    """The var of weight ``w`` as upstream's grouped operators take it: this fork's
    (O, I/G, k...) of ``rank`` axes reshaped to (G, O/G, I/G, k...); ``w`` itself otherwise."""
    weight = g.ids[id(w)]
    if groups > 1 and len(w.shape) == rank:
        o = int(w.shape[0])
        shape = (groups, o // groups) + tuple(int(d) for d in w.shape[1:])
        weight = g.reshape(weight, g.shape_const(shape, device, name), name, shape)
    return weight


def _add_axes(g, k, shape, axes, name):
    """Var ``k`` (of ``shape``) with axes of 1 added at ``axes`` (AxisAddRemove); returns
    (var, shape)."""
    shape = tuple(shape)
    for a in axes:
        shape = shape[:a] + (1,) + shape[a:]
    return g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(0, a) for a in axes])}, [k],
                [(name, shape)])[0], shape


def _convolution_any(g, opr, ins, outs, p, device):
    """A convolution (ConvolutionForward) or transposed one (ConvolutionBackwardData,
    Convolution3DBackwardData) of any rank, as upstream's F.conv1d, conv2d,
    conv_transpose2d and conv_transpose3d build them: a 1-d one as a 2-d Convolution of the
    input and the weight with an axis of 1 added last, that axis then removed (upstream's
    conv1d); a transposed one takes the weight, then the data, and, with output padding,
    a third input of the output's shape (a zero broadcast to it: its batch the input's, as
    upstream's Alloc of that shape)."""
    t = _graph_type_of(opr)
    x, w, y = ins[0], ins[1], outs[0]
    op = opr._op
    nd, transposed = int(op.nd), t != "ConvolutionForward"
    if nd == 1 and transposed or nd not in (1, 2, 3) or len(ins) != 2:
        _refuse(opr, f"a {'transposed ' if transposed else ''}{nd}-d convolution of "
                     f"{len(ins)} inputs; 1-d, 2-d and 3-d convolutions and 2-d and 3-d "
                     "transposed ones are written")
    if nd == 3:
        _float32_values(opr, (x, w, y), "3-d transposed convolution")
    data, weight = g.ids[id(x)], g.ids[id(w)]
    if nd == 1:  # (upstream's conv1d: (N, C, L, 1) by a (..., K, 1) weight)
        data, _ = _add_axes(g, data, x.shape, [3], f"{y.name}:input4d")
        weight, _ = _add_axes(g, weight, w.shape, [len(w.shape)], f"{y.name}:weight4d")
    inputs = [weight, data] if transposed else [data, weight]
    if transposed and any(int(v) for v in op.output_padding):
        inputs.append(_like(g, data, y, y.dtype, device))
    if nd == 3:
        params = {0: ("I", 0), 1: ("I", p["pad_d"]), 2: ("I", p["pad_h"]),
                  3: ("I", p["pad_w"]), 4: ("I", p["stride_d"]), 5: ("I", p["stride_h"]),
                  6: ("I", p["stride_w"]), 7: ("I", p["dilate_d"]), 8: ("I", p["dilate_h"]),
                  9: ("I", p["dilate_w"]), 10: ("I", int(p["sparse"] == "GROUP")),
                  12: ("I", 0)}
        name, ptype = "Convolution3DBackwardData", 41
    else:
        params, ptype = _convolution(p, ins, outs), 3
        name = "ConvolutionBackwardData" if transposed else "Convolution"
    shape = tuple(y.shape) + ((1,) if nd == 1 else ())
    made = g.op(name, 2, ptype, params, inputs,
                [(f"{y.name}:4d" if nd == 1 else y.name, shape)], extra=[(55, {})])[0]
    if nd == 1:
        made = g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(1, 3)])}, [made],
                    [(y.name, y.shape)])[0]
    g.ids[id(y)] = made


def _batch_norm(g, opr, ins, outs, p, device):
    """Upstream's BatchNormV1 (inference, statistics of shape (1, C, 1, 1)): the input,
    scale, bias, mean and variance. A batch norm without weight or bias (F.batch_norm's
    default) takes ones or zeros for them, as upstream's F.batch_norm fills them in; an input
    of other than 4 axes ((N, C), (N, C, L), (N, C, D, H, W)) is normalized as (N, C, rest, 1)
    and reshaped back (upstream's BatchNorm1d adds axes likewise)."""
    q = opr.params
    x, y = ins[0], outs[0]
    if q.get("training") or not q.get("has_stats") or len(x.shape) < 2:
        _refuse(opr, "a batch norm in training mode, without running statistics or of an "
                     "input of fewer than 2 axes; inference with running statistics is written")
    _float32_values(opr, list(ins) + [y], "batch norm")
    n, c = int(x.shape[0]), int(x.shape[1])
    stats = (1, c, 1, 1)
    given = iter(ins[1:])
    parts = [next(given) if q.get(k) else k for k in ("has_weight", "has_bias")]
    parts += [next(given), next(given)]
    inputs = []
    for k, v in enumerate(parts):
        if isinstance(v, str):  # (a weight of ones, a bias of zeros)
            inputs.append(g.const(np.full(stats, 1.0 if k == 0 else 0.0, np.float32), device,
                                  f"{opr.name}:{'weight' if k == 0 else 'bias'}"))
            continue
        k_v = g.ids[id(v)]
        if tuple(v.shape) != stats:
            k_v = g.reshape(k_v, g.shape_const(stats, device, f"{opr.name}:param{k}"),
                            f"{opr.name}:param{k}", stats)
        inputs.append(k_v)
    data, shape = g.ids[id(x)], tuple(x.shape)
    if len(shape) != 4:  # (N, C, rest, 1): N read and rest inferred where the file runs
        shape = (n, c, int(np.prod(shape[2:], dtype=np.int64)), 1)
        target = g.concat([g.shape_of(data, 0, f"{y.name}:n"),
                           g.shape_const([c, 1, 1], device, f"{y.name}:4d")], 0,
                          f"{y.name}:4d:shape", (4,), device)
        data = g.reshape(data, target, f"{y.name}:input4d", shape, axis=2)
    made = g.op("BatchNormV1", 1, 11, {0: ("I", 2), 1: ("I", 1), 2: ("d", float(p["epsilon"]))},
                [data] + inputs,
                [(f"{opr.name}:mean", stats), (f"{opr.name}:variance", stats),
                 (f"{opr.name}:reserve", (0,)),
                 (y.name if shape == tuple(x.shape) else f"{y.name}:4d", shape)])[3]
    if shape != tuple(x.shape):  # (back to the input's shape where the file runs)
        made = g.reshape(made, g.shape_of(g.ids[id(x)], _NO_AXIS, f"{y.name}:shape",
                                          (len(x.shape),)), y.name, y.shape)
    g.ids[id(y)] = made


def _deformable_conv(g, opr, ins, outs, p, device):
    """Upstream's DeformableConvForward: the input, weight ((G, O/G, C/G, KH, KW) where
    grouped), offsets and mask, a Convolution parameter."""
    x, w, offset, mask = ins
    y = outs[0]
    _float32_values(opr, list(ins) + [y], "deformable convolution")
    groups = int(opr.params.get("groups", 1))
    weight = _grouped_weight(g, w, groups, 4, device, f"{y.name}:w")
    g.ids[id(y)] = g.op("DeformableConvForward", 2, 3, _convolution(p, ins, outs),
                        [g.ids[id(x)], weight, g.ids[id(offset)], g.ids[id(mask)]],
                        [(y.name, y.shape)], extra=[(55, {})])[0]


def _group_local(g, opr, ins, outs, p, device):
    """Upstream's GroupLocalV2: the input and the weight (groups, OH, OW, C/groups, KH, KW,
    O/groups); this fork's (OH, OW, C, KH, KW, O) one gets its group axis of 1 first."""
    x, w = ins
    y = outs[0]
    _float32_values(opr, list(ins) + [y], "local convolution")
    weight = g.ids[id(w)]
    if len(w.shape) == 6:
        weight, _ = _add_axes(g, weight, w.shape, [0], f"{y.name}:w")
    g.ids[id(y)] = g.op("GroupLocalV2", 1, 3, _convolution(dict(p, sparse="DENSE"), ins, outs),
                        [g.ids[id(x)], weight], [(y.name, y.shape)])[0]


def _convolution3d(g, opr, ins, outs, p, device):
    """Upstream's Convolution3D (NCDHW cross-correlation; a grouped one's weight (G, O/G,
    I/G, KD, KH, KW), reshaped to that from this fork's (O, I/G, KD, KH, KW))."""
    x, w, y = ins[0], ins[1], outs[0]
    for what, v in (("an input", x), ("a weight", w), ("an output", y)):
        _float32_only(opr, what, v)
    groups = int(opr.params.get("groups", 1))
    weight = _grouped_weight(g, w, groups, 5, device, f"{y.name}:w")
    (sd, sh, sw), (pd, ph, pw), (dd, dh, dw) = (tuple(int(p[f"{k}_{a}"]) for a in "dhw")
                                                for k in ("stride", "pad", "dilate"))
    params = {0: ("I", 0), 1: ("I", pd), 2: ("I", ph), 3: ("I", pw), 4: ("I", sd),
              5: ("I", sh), 6: ("I", sw), 7: ("I", dd), 8: ("I", dh), 9: ("I", dw),
              10: ("I", int(groups > 1)), 12: ("I", 0)}
    g.ids[id(y)] = g.op("Convolution3D", 2, 41, params, [g.ids[id(x)], weight],
                        [(y.name, y.shape)], extra=[(55, {})])[0]


_NONLINEAR = {"identity": 0, "relu": 1, "sigmoid": 2, "h_swish": 3}


def _conv_bias(g, opr, ins, outs, p, device):
    """A quantized convolution (`megengine.functional.quantized`'s, what ``quantize`` makes of
    Conv2d, ConvBn2d, ConvBnRelu2d): upstream's ConvBiasForward, its nonlinearity a parameter
    and its output's quantized dtype the operator's output dtype. A transposed one (of
    identity: ConvTranspose2d) is upstream's ConvolutionBackwardData, output padding a third
    input of the output's shape (upstream's Alloc of it); with a bias, which upstream 1.13's
    quantized conv_transpose2d refuses, it writes the qint32 accumulator, then what this fork
    computes of it as upstream's ConvBias does: the accumulator and the bias each in float32,
    summed, quantized to the output's dtype (TypeCvt, ADD, TypeCvt)."""
    from ...core import dtype as qd

    transposed, stride, padding, dilation, out_pad, groups = p["geometry"]
    y = outs[0]
    bias = len(ins) == 3
    if p.get("mode") not in _NONLINEAR or len(stride) != 2 or transposed and (
            p["mode"] != "identity" or len(ins) not in (2, 3) or bias and not _requantized(y)):
        what = "transposed convolution" if transposed else "convolution"
        _refuse(opr, f"a quantized {what} of nonlinearity {p.get('mode')!r} over "
                     f"{len(stride)} axes with {len(ins) - 2} bias inputs to {y.dtype}; 2-d "
                     "ones of identity, relu, sigmoid and h_swish are written, transposed ones "
                     "of identity, with a bias to an 8-bit quantized output")
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if transposed:  # (upstream's ConvolutionBackwardData: the weight, then the data)
        params = {1: ("I", ph), 2: ("I", pw), 3: ("I", sh), 4: ("I", sw), 5: ("I", dh),
                  6: ("I", dw), 7: ("I", int(groups != 1))}
        x, w = ins[0], ins[1]
        acc = y.dtype if not bias else qd.qint32(float(
            np.float32(qd.get_scale(x.dtype)) * np.float32(qd.get_scale(w.dtype))))
        inputs = [g.ids[id(w)], g.ids[id(x)]]
        name = f"{y.name}:accumulator" if bias else y.name
        if any(out_pad):
            inputs.append(_like(g, inputs[1], y, acc, device))
        made = g.op("ConvolutionBackwardData", 2, 3, params, inputs, [(name, y.shape)],
                    extra=[(55, {})], output_dtype=_dtype(acc, f"{y.name}"))[0]
        if bias:
            f32 = np.dtype(np.float32)
            value = g.cast(made, f32, f"{y.name}:float", y.shape)
            b = g.cast(g.ids[id(ins[2])], f32, f"{y.name}:bias", ins[2].shape)
            made = g.cast(g.elemwise("ADD", [value, b], f"{y.name}:sum", y.shape), y.dtype,
                          y.name, y.shape)
        g.ids[id(y)] = made
        return
    params = {0: ("I", _NONLINEAR[p["mode"]]), 2: ("I", int(groups != 1)), 4: ("I", ph),
              5: ("I", pw), 6: ("I", sh), 7: ("I", sw), 8: ("I", dh), 9: ("I", dw)}
    g.ids[id(y)] = g.op("ConvBiasForward", 2, 6, params, [g.ids[id(v)] for v in ins],
                        [(y.name, y.shape)], extra=[(55, {})],
                        output_dtype=_dtype(y.dtype, f"{y.name}"))[0]


def _requantized(y):
    """Whether ``y``'s dtype is an 8-bit quantized one (a transposed convolution's output with
    a bias is written as the sum of floats quantized to it)."""
    name = (np.dtype(y.dtype).metadata or {}).get("mgb_dtype", {}).get("name")
    return name in ("QuantizedS8", "Quantized8Asymm")


def _like(g, data, y, dtype, device):
    """A value of ``y``'s shape (its batch that of var ``data``), the third input giving a
    transposed convolution with output padding its output size: a zero of ``dtype`` broadcast
    to it (upstream's own: an Alloc of that shape)."""
    batch = g.shape_of(data, 0, f"{y.name}:batch")
    rest = g.shape_const([int(d) for d in y.shape[1:]], device, f"{y.name}:size")
    shape = g.concat([batch, rest], 0, f"{y.name}:shape", (len(y.shape),), device)
    zero = g.const(np.zeros(1, dtype), device, f"{y.name}:zero")
    return g.op("Broadcast", 1, 1, {}, [zero, shape], [(f"{y.name}:like", y.shape)])[0]


# --------------------------------------------------------------------------------------------
# matrix products
# --------------------------------------------------------------------------------------------
def _matrix_mul(g, opr, ins, outs, p, device):
    """This fork's matmul (MatrixMul, BatchedMatrixMul: numpy's rules, a 1-d operand a vector,
    batch axes broadcast) as upstream's operators, which take two matrices (MatrixMul) or two
    3-d values of one batch (BatchedMatrixMul): those as they are; else as upstream's F.matmul
    builds it: a vector gets an axis, removed from the result; a batch times a matrix is the
    batch's rows times the matrix (a linear layer of a 3-d input), a matrix times a batch the
    same transposed; batches broadcast to each other, then flattened to one axis. Each batch
    size is read where the file runs, so the file follows the batch."""
    (a, b), y = ins, outs[0]
    ka, kb, sa, sb = g.ids[id(a)], g.ids[id(b)], tuple(a.shape), tuple(b.shape)
    name = y.name
    if len(sa) == len(sb) == 2 or len(sa) == len(sb) == 3 and sa[0] == sb[0]:
        kind = "MatrixMulV2" if len(sa) == 2 else "BatchedMatrixMulV2"  # (upstream's own)
        g.ids[id(y)] = g.op(kind, 1, 20, _matmul(p, ins, outs), [ka, kb], [(name, y.shape)],
                            comp_node=device)[0]
        return
    if a.dtype.metadata is not None or b.dtype.metadata is not None:
        _refuse(opr, f"a quantized matmul of shapes {sa} and {sb}; two matrices or two 3-d "
                     "values of one batch are written")

    def swap(k, s, tag):  # the last two axes exchanged
        t = s[:-2] + (s[-1], s[-2])
        pattern = list(range(len(s) - 2)) + [len(s) - 1, len(s) - 2]
        return g.op("Dimshuffle", 1, 64, {0: ("i32s", pattern), 1: ("I", len(s))}, [k],
                    [(f"{name}:{tag}", t)])[0], t

    def axis_op(k, method, axis, shape, tag):  # AxisAddRemove: method 0 adds, 1 removes
        return g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(method, axis)])}, [k],
                    [(f"{name}:{tag}", shape)])[0]

    def product(x, w, shape, tag, transpose_w=False):  # (products take the comp node)
        return g.op("MatrixMulV2", 1, 20, {0: ("?", False), 1: ("?", transpose_w)},
                    [x, w], [(f"{name}:{tag}", shape)], comp_node=device)[0]

    if p.get("transposeA") and len(sa) > 1:
        ka, sa = swap(ka, sa, "a:t")
    if p.get("transposeB") and len(sb) > 1:
        kb, sb = swap(kb, sb, "b:t")
    drop = []  # the result's axes a vector operand added
    if len(sa) == 1:
        ka, sa = axis_op(ka, 0, 0, (1,) + sa, "a:row"), (1,) + sa
        drop.append(-2)
    if len(sb) == 1:
        kb, sb = axis_op(kb, 0, 1, sb + (1,), "b:column"), sb + (1,)
        drop.append(-1)
    if len(sa) == 2 and len(sb) == 2:
        shape = (sa[0], sb[1])
        k = product(ka, kb, shape, "2d")
    elif len(sb) == 2:  # the batch's rows times the matrix
        rows = g.rows(ka, sa, f"{name}:rows", device)
        k = product(rows, kb, (int(np.prod(sa[:-1])), sb[1]), "rows:product")
        shape = sa[:-1] + (sb[1],)
        k = g.unrows([k], ka, sa, sb[1], [f"{name}:batched"], device)[0]
    elif len(sa) == 2:  # (b^T a^T)^T: the rows of b^T times a^T
        kbt, sbt = swap(kb, sb, "b:t")
        rows = g.rows(kbt, sbt, f"{name}:rows", device)
        k = product(rows, ka, (int(np.prod(sbt[:-1])), sa[0]), "rows:product", True)
        k = g.unrows([k], kbt, sbt, sa[0], [f"{name}:batched"], device)[0]
        k, shape = swap(k, sbt[:-1] + (sa[0],), "t")
    else:  # batches of more axes, or broadcast to each other
        batch = tuple(np.broadcast_shapes(sa[:-2], sb[:-2]))
        sizes = []  # the batch's sizes where the file runs: of an operand that has them
        for i, size in enumerate(batch):
            for k_, s in ((ka, sa), (kb, sb)):
                j = i - (len(batch) - (len(s) - 2))
                if j >= 0 and s[j] == size:
                    sizes.append(g.shape_of(k_, j, f"{name}:batch{i}"))
                    break
            else:  # (1 in both)
                sizes.append(g.shape_const([1], device, f"{name}:batch{i}"))

        def batched(k, s, tag):  # the operand with the whole batch, flattened to one axis
            last = [g.shape_of(k, len(s) - 2, f"{name}:{tag}:m"),
                    g.shape_of(k, len(s) - 1, f"{name}:{tag}:n")]
            if s[:-2] != batch:
                target = g.concat(sizes + last, 0, f"{name}:{tag}:whole", (len(batch) + 2,),
                                  device)
                k = g.op("Broadcast", 1, 1, {}, [k, target],
                         [(f"{name}:{tag}:broadcast", batch + s[-2:])])[0]
            if len(batch) == 1:
                return k, last
            target = g.concat([g.shape_const([1], device, f"{name}:{tag}:flat")] + last, 0,
                              f"{name}:{tag}:flat:shape", (3,), device)
            return g.reshape(k, target, f"{name}:{tag}:flat", (int(np.prod(batch)),)
                             + s[-2:], axis=0), last

        (ka, (m, _)), (kb, (_, n)) = batched(ka, sa, "a"), batched(kb, sb, "b")
        shape = batch + (sa[-2], sb[-1])
        k = g.op("BatchedMatrixMulV2", 1, 20, {0: ("?", False), 1: ("?", False)},
                 [ka, kb], [(f"{name}:3d", (int(np.prod(batch)),) + shape[-2:])],
                 comp_node=device)[0]
        if len(batch) > 1:
            target = g.concat(sizes + [m, n], 0, f"{name}:shape", (len(shape),), device)
            k = g.reshape(k, target, f"{name}:batched", shape)
    if -1 in drop:  # (a vector b: its column axis)
        shape = shape[:-1]
        k = axis_op(k, 1, len(shape), shape, "drop:n")
    if -2 in drop:  # (a vector a: its row axis, now the last if b's went)
        at = len(shape) - (1 if -1 in drop else 2)
        shape = shape[:at] + shape[at + 1:]
        k = axis_op(k, 1, at, shape, "drop:m")
    g.middle[k][0] = ("str", name)
    g.ids[id(y)] = k
