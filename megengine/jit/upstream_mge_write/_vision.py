"""Writers of vision operators: remap, warp_perspective and warp_affine (this fork's Sample
of a PerspectivePoints), roi_align, roi_pooling, sliding_window (Images2Neibs), interpolate
(every mode) and nms. (The 3-d convolution is in `_layers`.)"""
import warnings

import numpy as np

from ._base import (_RESIZE_MODES, _check, _float32_only, _graph_params_of, _graph_type_of,
                    _refuse, _resize, _size, _size_written, _user_stacklevel)


# --------------------------------------------------------------------------------------------
# vision: warps, remap, ROI pooling, NMS, sliding windows, interpolation
# --------------------------------------------------------------------------------------------
# megdnn's WarpPerspective / WarpAffine / Remap modes (`upstream_mge._WARP_BORDER`)
_WARP_BORDERS = {"replicate": 0, "reflect": 1, "reflect_101": 2, "wrap": 3, "constant": 4}
_WARP_INTERPS = {"nearest": 0, "linear": 1}


def _perspective_points(g, opr, ins, outs, p, device):
    """The source points of a warp (this fork's PerspectivePoints): not written; the Sample
    reading them writes upstream's WarpPerspective or WarpAffine of their matrices
    (`_sample`). (Only a Sample reads them: warp_perspective and warp_affine make both.)"""
    g.ids[id(outs[0])] = None


def _sample(g, opr, ins, outs, p, device):
    """remap (upstream's RemapV1), warp_perspective (WarpPerspectiveV2: image, matrices, the
    optional mat_idx, the output size) and warp_affine (WarpAffineV2), NCHW: this fork's
    Sample of the points its PerspectivePoints computes from the matrices. Where this fork's
    CPU sampled on OpenCV's grid (NHWC float32 images of few channels: upstream's CPU kernel
    for them), the image is written NHWC, as the function was called, between transposes."""
    img, points, y = ins[0], ins[1], outs[0]
    mode, border = p.get("interp"), p.get("border")
    if mode not in _WARP_INTERPS or border not in _WARP_BORDERS:
        _refuse(opr, f"a sampling of interpolation {mode!r}, border {border!r}")  # (unreachable)
    _float32_only(opr, "an image", img)
    _float32_only(opr, "an output", y)
    owner = getattr(points, "owner", None)
    warp = owner is not None and _graph_type_of(owner) == "PerspectivePoints"
    if p.get("order") == "remap" and not warp:
        if len(ins) != 2:
            _refuse(opr, "a remap of chosen images")
        _float32_only(opr, "a remap's map_xy", points)
        params = {0: ("I", _WARP_INTERPS[mode]), 1: ("I", _WARP_BORDERS[border]),
                  2: ("I", 0), 3: ("f", float(p.get("border_val", 0.0)))}
        g.ids[id(y)] = g.op("RemapV1", 1, 68, params, [g.ids[id(img)], g.ids[id(points)]],
                            [(y.name, y.shape)])[0]
        return
    if not warp or p.get("order") not in ("warp", "table"):
        _refuse(opr, "a sampling at points other than a warp's or a remap's")
    mat = owner.inputs[0]
    pp = _graph_params_of(owner)
    _float32_only(opr, "a warp's matrices", mat)
    affine = int(mat.shape[1]) == 2
    cv = pp.get("cv_grid") is not None
    if cv != (p.get("order") == "table") or (cv and pp.get("cv_grid") != mode):
        _refuse(opr, "a warp whose points and sampling disagree on OpenCV's grid")
    if mode == "nearest" and not cv:
        _refuse(opr, "a warp of nearest interpolation sampled NCHW (upstream's NCHW "
                     "WarpPerspective and WarpAffine interpolate linearly only: its kernels "
                     "assert it); linear ones, and nearest ones of the NHWC images upstream's "
                     "CPU samples on OpenCV's grid (1-3 channels, float32), are written")
    if affine and len(ins) != 2:
        _refuse(opr, "a warp_affine of chosen images (mat_idx)")
    size = (int(pp["out_h"]), int(pp["out_w"]))
    x = g.ids[id(img)]
    n, c = int(y.shape[0]), int(y.shape[1])
    if cv:  # (upstream's CPU kernel samples NHWC images of few channels on OpenCV's grid)
        x = g.op("Dimshuffle", 1, 64, {0: ("i32s", [0, 2, 3, 1]), 1: ("I", 4)}, [x],
                 [(f"{y.name}:nhwc", tuple(img.shape[i] for i in (0, 2, 3, 1)))])[0]
    inputs = [x, g.ids[id(mat)]]
    if len(ins) == 3:  # mat_idx: the image of each matrix
        idx = ins[2]
        if np.dtype(idx.dtype) != np.int32:
            _refuse(opr, f"a mat_idx of dtype {idx.dtype}; int32 is written")
        inputs.append(g.ids[id(idx)])
    inputs.append(g.shape_const(size, device, opr.name))
    layout = 1 if cv else 0
    interp, bmode = _WARP_INTERPS[mode], _WARP_BORDERS[border]
    value = float(p.get("border_val", 0.0))
    if affine:
        name, ptype, params = "WarpAffineV2", 38, {0: ("I", interp), 1: ("I", bmode),
                                                    2: ("f", value), 3: ("I", layout)}
    else:
        name, ptype, params = "WarpPerspectiveV2", 13, {0: ("I", interp), 1: ("I", bmode),
                                                         2: ("I", layout), 3: ("f", value)}
    shape = (n,) + size + (c,) if cv else tuple(y.shape)
    made = g.op(name, 1, ptype, params, inputs, [(f"{y.name}:nhwc" if cv else y.name, shape)])[0]
    if cv:
        made = g.op("Dimshuffle", 1, 64, {0: ("i32s", [0, 3, 1, 2]), 1: ("I", 4)}, [made],
                    [(y.name, y.shape)])[0]
    g.ids[id(y)] = made


_ROI_MODES = {"max": 0, "average": 1}


def _roi_align(g, opr, ins, outs, p, device):
    """Upstream's ROIAlignV1 (NCHW): the features, then the argmax indices its backward
    reads (int32, not part of this fork's result: a var no one reads)."""
    x, rois, y = ins[0], ins[1], outs[0]
    for what, v in (("an image", x), ("rois", rois), ("an output", y)):
        _float32_only(opr, what, v)
    (ph, pw), (sh, sw) = p["pooled"], p["samples"]
    params = {0: ("I", _ROI_MODES[p["mode"]]), 1: ("I", 0), 2: ("f", float(p["scale"])),
              3: ("f", float(p["offset"])), 4: ("I", int(ph)), 5: ("I", int(pw)),
              6: ("I", int(sh)), 7: ("I", int(sw))}
    g.ids[id(y)] = g.op("ROIAlignV1", 1, 48, params, [g.ids[id(x)], g.ids[id(rois)]],
                        [(y.name, y.shape), (f"{y.name}:argmax", y.shape)])[0]


def _roi_pooling(g, opr, ins, outs, p, device):
    """Upstream's ROIPooling: (features, rois, the output size), the features, then the
    argmax indices its backward reads (not part of this fork's result)."""
    x, rois, y = ins[0], ins[1], outs[0]
    for what, v in (("an image", x), ("rois", rois), ("an output", y)):
        _float32_only(opr, what, v)
    size = g.shape_const([int(v) for v in p["pooled"]], device, opr.name)
    params = {0: ("I", _ROI_MODES[p["mode"]]), 1: ("f", float(p["scale"]))}
    g.ids[id(y)] = g.op("ROIPooling", 1, 12, params, [g.ids[id(x)], g.ids[id(rois)], size],
                        [(y.name, y.shape), (f"{y.name}:argmax", y.shape)])[0]


def _im2col(g, opr, ins, outs, p, device):
    """``sliding_window``: upstream's Images2Neibs ((N, C, OH, OW, KH, KW) windows)."""
    x, y = ins[0], outs[0]
    if p.get("what") != "sliding_window" or len(y.shape) != 6:
        _refuse(opr, f"windows of {p.get('what')!r} of shape {tuple(y.shape)}; "
                     "sliding_window's (N, C, OH, OW, KH, KW) are written")
    _float32_only(opr, "an input", x)
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = (tuple(int(v) for v in p[k])
                                              for k in ("p", "s", "d", "k"))
    params = {0: ("I", ph), 1: ("I", pw), 2: ("I", sh), 3: ("I", sw), 4: ("I", dh),
              5: ("I", dw), 6: ("I", kh), 7: ("I", kw)}
    g.ids[id(y)] = g.op("Images2Neibs", 1, 8, params, [g.ids[id(x)]], [(y.name, y.shape)])[0]


def _col2im(g, opr, ins, outs, p, device):
    """``sliding_window_transpose``: upstream's SlidingWindowTranspose ((N, C, OH, OW, KH,
    KW) windows summed into the output size)."""
    x, y = ins[0], outs[0]
    if p.get("what") != "sliding_window_transpose":
        _refuse(opr, f"windows summed back for {p.get('what')!r}; sliding_window_transpose's "
                     "are written")
    _float32_only(opr, "an input", x)
    values = [int(v) for k in ("size", "p", "s", "d", "k") for v in p[k]]
    params = {i: ("I", v) for i, v in enumerate(values)}
    g.ids[id(y)] = g.op("SlidingWindowTranspose", 1, 81, params, [g.ids[id(x)]],
                        [(y.name, y.shape)])[0]


def _interpolate(g, opr, ins, outs, p, device):
    """``interpolate``: nearest and bilinear (corners not aligned) as upstream's ResizeV2 of
    the output size, as before; the other modes as upstream's interpolate computes them:
    bicubic: ResizeV2 of cubic interpolation; linear (N, C, L): of the input with a width of
    1 (AxisAddRemove), removed after; align_corners (bilinear, linear): WarpPerspectiveV2 by
    the matrix scaling each axis by (in - 1) / (out - 1) (0 for an output of 1: this fork's
    corner; upstream's own divides by 0 there), broadcast to the batch; trilinear: Resize3D
    (NCDHW, align_corners as given)."""
    from ...jit._program import _DimExpr

    _check(opr, "ResizeForward", p, ins)
    x, y = ins[0], outs[0]
    mode, aligned = p.get("mode"), bool(p.get("align_corners"))
    frozen = dict(opr._dyn or ()).get("sizes")  # (an output size computed from shapes; one
    # this writer cannot compute (round() of sizes) stays the traced constant, as before)
    computed = frozen is not None and any(type(v) is _DimExpr for v in frozen[1]) and all(
        _size_written(v.tree) for v in frozen[1] if type(v) is _DimExpr)

    def size_var(extra=()):
        """The output size: computed in the file from shapes where the program computes it
        (``size=lateral.shape[2:]``, an FPN's: the file follows its inputs, as upstream's
        own), else the traced constant; ``extra`` sizes appended (linear's width of 1)."""
        if not computed:
            return g.shape_const(tuple(int(v) for v in y.shape[2:]) + extra, device, opr.name)
        parts = [_size(g, opr, v.tree if type(v) is _DimExpr else int(v), device,
                       f"{opr.name}:size{k}") for k, v in enumerate(frozen[1])]
        parts += [g.shape_const(list(extra), device, f"{opr.name}:extra")] if extra else []
        return g.concat(parts, 0, f"{opr.name}:size", (len(parts),), device)

    if mode in _RESIZE_MODES and not aligned and len(x.shape) == 4:  # (as `_OPERATORS` has it)
        g.ids[id(y)] = g.op("ResizeV2", 1, 40, _resize(p, ins, outs),
                            [g.ids[id(x)], size_var()], [(y.name, y.shape)])[0]
        return
    if mode not in ("bicubic", "linear", "bilinear", "trilinear"):  # pragma: no cover
        _resize(p, ins, outs)  # (refuses by name)
    for what, v in (("an image", x), ("an output", y)):
        if np.dtype(v.dtype) != np.float32:
            _refuse(opr, f"an interpolation of mode {mode!r} of {what} of dtype {v.dtype}; "
                         "float32 ones are written (nearest and bilinear of others too)")
    sizes = tuple(int(v) for v in y.shape[2:])
    k = g.ids[id(x)]
    if mode == "trilinear":
        g.ids[id(y)] = g.op("Resize3D", 1, 96, {0: ("I", 1), 1: ("I", 0), 2: ("?", aligned)},
                            [k, size_var()], [(y.name, y.shape)])[0]
        return
    shape = tuple(int(v) for v in x.shape)
    if mode == "linear":  # (N, C, L) as (N, C, L, 1)
        shape, sizes = shape + (1,), sizes + (1,)
        k = g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(0, 3)])}, [k],
                 [(f"{y.name}:2d", shape)])[0]
    out = shape[:2] + sizes
    name = f"{y.name}:2d" if mode == "linear" else y.name
    if not aligned:
        k = g.op("ResizeV2", 1, 40, {0: ("I", 3 if mode == "bicubic" else 1), 1: ("I", 0)},
                 [k, size_var((1,) if mode == "linear" else ())], [(name, out)])[0]
    else:
        if computed:  # (sizes computed from shapes: the scaling matrix too, in the file)
            mat, size = _aligned_matrix(g, opr, k, frozen[1], mode == "linear", y, device)
        else:
            (ih, iw), (oh, ow) = shape[2:], sizes
            scale = [np.float32((n - 1.0) / (m - 1.0)) if m > 1 else np.float32(0)
                     for n, m in ((iw, ow), (ih, oh))]
            mat = g.const(np.array([[[scale[0], 0, 0], [0, scale[1], 0], [0, 0, 1]]],
                                   np.float32), device, f"{y.name}:mat")
            size = None  # (the traced constant, made after the matrix's broadcast)

        def batch_shape():
            n = g.shape_of(g.ids[id(x)], 0, f"shape_of({x.name})[0]")
            return g.concat([n, g.shape_const([3, 3], device, f"{y.name}:mat")], 0,
                            f"{y.name}:mat:shape", (3,), device)

        mat = g.broadcast(mat, (1, 3, 3), (shape[0], 3, 3), f"{y.name}:mats", batch_shape)
        k = g.op("WarpPerspectiveV2", 1, 13, {0: ("I", 1), 1: ("I", 0), 2: ("I", 0),
                                              3: ("f", 0.0)},
                 [k, mat, size if size is not None else g.shape_const(sizes, device, opr.name)],
                 [(name, out)])[0]
    if mode == "linear":
        k = g.op("AxisAddRemove", 1, 65, {0: ("structs <Ii", [(1, 3)])}, [k],
                 [(y.name, y.shape)])[0]
    g.ids[id(y)] = k


def _aligned_matrix(g, opr, k, items, linear, y, device):
    """(the (1, 3, 3) matrix, the output size) of an align_corners interpolation of var ``k``
    (N, C, H, W) to output sizes ``items`` (sizes computed from shapes, or ints; ``linear``: a
    width of 1 added), both computed in the file: each axis scaled by (in - 1) / (out - 1),
    0 for an output of 1 (``(in - 1) / max(out - 1, 1) * min(out - 1, 1)`` in float32), so
    the file follows its input's sizes as upstream's interpolate does."""
    from ...jit._program import _DimExpr

    f32, name = np.dtype(np.float32), y.name
    one = g.const(np.ones(1, f32), device, f"{name}:1")
    zero = g.const(np.zeros(1, f32), device, f"{name}:0")
    outs = [_size(g, opr, v.tree if type(v) is _DimExpr else int(v), device,
                  f"{name}:out{j}", f32) for j, v in enumerate(items)] + ([one] if linear else [])

    def scale(axis, out, tag):
        n = g.shape_of(k, axis, f"{name}:in{axis}")
        n = g.cast(n, f32, f"{name}:in{axis}:f", (1,))
        den = g.elemwise("SUB", [out, one], f"{name}:{tag}:out-1", (1,))
        q = g.elemwise("TRUE_DIV", [g.elemwise("SUB", [n, one], f"{name}:{tag}:in-1", (1,)),
                                    g.elemwise("MAX", [den, one], f"{name}:{tag}:den", (1,))],
                       f"{name}:{tag}:q", (1,))
        return g.elemwise("MUL", [q, g.elemwise("MIN", [den, one], f"{name}:{tag}:gate", (1,))],
                          f"{name}:{tag}", (1,))

    sx, sy = scale(3, outs[1], "sx"), scale(2, outs[0], "sy")
    flat = g.concat([sx, zero, zero, zero, sy, zero, zero, zero, one], 0, f"{name}:mat9", (9,),
                    device)
    mat = g.reshape(flat, g.shape_const([1, 3, 3], device, f"{name}:mat"), f"{name}:mat",
                    (1, 3, 3))
    sizes = [g.cast(v, np.int32, f"{name}:size{j}", (1,)) for j, v in enumerate(outs)]
    return mat, g.concat(sizes, 0, f"{name}:size", (2,), device)


def _traced_args(opr):
    """A Compute's arguments, a size computed from shapes (nms' default max_output, the
    number of boxes) at its traced value (the file holds the traced shapes there)."""
    from ...core._trace_option import evaluate
    from ...jit._program import _DimExpr

    frozen = dict(opr._dyn or ()).get("args")
    if frozen is None:
        return opr._op.args
    return tuple(evaluate(v.tree, lambda k, axis: opr._dyn_vars[k].shape[axis])
                 if type(v) is _DimExpr else v for v in frozen[1])


def _cvt_color(g, opr, ins, outs, p, device):
    """``cvt_color`` of uint8 images (this fork's integer kernel): upstream's CvtColor in the
    mode of that name, which computes the same integers (each mode measured on upstream 1.13);
    float images are written as the matrix product this fork computes."""
    from ..upstream_mge import _CVT_COLOR_MODES

    y = outs[0]
    mode = _CVT_COLOR_MODES.index(opr._op.args[0])
    g.ids[id(y)] = g.op("CvtColor", 1, 37, {0: ("I", mode)}, [g.ids[id(ins[0])]],
                        [(y.name, y.shape)])[0]


def _nms(g, opr, ins, outs, p, device):
    """``nms`` as upstream's builds it: the boxes sorted by descending score (an Argsort of
    the negated scores, ascending: stable on upstream's CPU as this fork's order of equal
    scores, where its descending one takes the last of them first), NMSKeep of them (kept
    positions padded to max_output, and their count), the first count of the positions
    (a size that follows the data), mapped back to the boxes' indices."""
    boxes, scores, y = ins[0], ins[1], outs[0]
    for what, v in (("boxes", boxes), ("scores", scores)):
        _float32_only(opr, what, v)
    iou, limit = _traced_args(opr)
    frozen = dict(opr._dyn or ()).get("args")
    if frozen is not None and type(frozen[1][1]).__name__ == "_DimExpr":
        warnings.warn(
            f"trace.dump(dump_format='FBS_V2'): nms without max_output keeps up to the number "
            f"of boxes, which follows the input here; upstream's NMSKeep takes a fixed "
            f"max_output, so the file keeps at most {int(limit)} (the traced number) at any "
            "input: give nms a max_output", stacklevel=_user_stacklevel())
    n = int(boxes.shape[0])
    if n == 0:
        _refuse(opr, "nms of no boxes")
    name = y.name
    # (the reshapes infer the count of boxes, axis 1: the file follows it, as upstream's)
    row = g.reshape(g.elemwise("NEGATE", [g.ids[id(scores)]], f"{name}:negated", (n,)),
                    g.shape_const((1, 1), device, f"{name}:row"), f"{name}:row", (1, n), axis=1)
    order = g.op("Argsort", 1, 26, {0: ("I", 0)}, [row],
                 [(f"{name}:sorted", (1, n)), (f"{name}:order", (1, n))])[1]
    zero = g.const(np.zeros(1, np.int32), device, f"{name}:0")
    first = {0: ("structs <b????", [(0, False, False, False, True)])}
    order = g.op("Subtensor", 1, 66, first, [order, zero], [(f"{name}:order0", (n,))])[0]
    sorted_boxes = g.op("IndexingMultiAxisVec", 1, 66, first, [g.ids[id(boxes)], order],
                        [(f"{name}:boxes", (n, 4))])[0]
    sorted_boxes = g.reshape(sorted_boxes, g.shape_const((1, 1, 4), device, f"{name}:boxes"),
                             f"{name}:boxes3", (1, n, 4), axis=1)
    keep, count = g.op("NMSKeepMGB", 1, 69, {0: ("f", float(iou)), 1: ("I", int(limit))},
                       [sorted_boxes], [(f"{name}:keep", (1, int(limit))),
                                        (f"{name}:count", (1,))])
    keep = g.op("Subtensor", 1, 66, first, [keep, zero], [(f"{name}:keep0", (int(limit),))])[0]
    count = g.op("Subtensor", 1, 66, first, [count, zero], [(f"{name}:count0", (1,))])[0]
    kept = g.op("Subtensor", 1, 66, {0: ("structs <b????", [(0, False, True, False, False)])},
                [keep, count], [(f"{name}:kept", y.shape)])[0]
    made = g.op("IndexingMultiAxisVec", 1, 66, first, [order, kept], [(name, y.shape)])[0]
    for k in (kept, made):  # (sizes that follow the data: no shape, as upstream's own files)
        g.middle[k][1] = ("u32s", [])
    g.ids[id(y)] = made
    g.dynamic.add(id(y))  # (what reads it must take no traced shape: `_SHAPE_FREE`)
