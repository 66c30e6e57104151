"""Multi-head attention (upstream 1.13's F.nn.multi_head_attention), composed from differentiable ops.

Upstream runs this on cuDNN only; here it is written with matmul, softmax and dropout, so it runs
on every device and its gradients come from those ops. The weights live in one flat
``io_weight_bias`` tensor, in upstream's order: query, key, value and output projection weights
(each ``(in, out)``, used as ``x @ W``, not torch's ``x @ W.T``), then the four biases.
"""
import math
from typing import Optional

import numpy as np

from ..core import amp as _amp
from ..core._trace_option import concrete, dumpable
from ..core.dispatch import Op, apply
from ..core.ops import ShapeError, xp_of
from ..core.tensor import Tensor
from ._args import _tensor

__all__ = ["multi_head_attention"]


def _float_mask(mask, name, dtype):
    """A boolean mask as an additive float mask (-inf where True); float masks pass as they are."""
    if mask is None:
        return None
    mask = _tensor(mask)
    if mask.dtype == np.bool_:
        from .tensor import where, zeros_like

        zeros = zeros_like(mask.astype(dtype))
        return where(mask, zeros - float("inf"), zeros)
    if mask.dtype.kind != "f":
        raise TypeError(f"multi_head_attention: {name} must be bool or floating point, got "
                        f"{mask.dtype}")
    return mask


def _causal_mask(q_len, k_len, like):
    """(L, S) additive mask hiding the keys after each query (-inf above the diagonal)."""
    mask = np.triu(np.full((q_len, k_len), -np.inf, dtype=like.dtype), k=1)
    return Tensor(mask, dtype=like.dtype, device=like.device)


def _merged_mask(attn_mask, key_padding_mask, is_causal, n, heads, q_len, k_len, like):
    """The additive mask for the (N, heads, L, S) scores, or None (upstream's ``_merge_masks``):
    ``is_causal`` without masks masks the keys after each query; ``attn_mask`` (L, S) applies to
    every batch, (N * heads, L, S) per batch and head; ``key_padding_mask`` (N, S) masks keys
    per batch; both given are added."""
    if is_causal and key_padding_mask is None:
        if attn_mask is not None:
            return attn_mask.reshape(-1, heads, q_len, k_len) if attn_mask.ndim == 3 \
                else attn_mask
        return _causal_mask(q_len, k_len, like)
    merged = None
    if attn_mask is not None:
        merged = attn_mask.reshape(n, heads, q_len, k_len) if attn_mask.ndim == 3 else attn_mask
    if key_padding_mask is not None:
        kpm = key_padding_mask.reshape(n, 1, 1, k_len)
        merged = kpm if merged is None else merged + kpm
    return merged


def _check_shapes(query, key, value, key_padding_mask, attn_mask, heads):
    what = "multi_head_attention"
    if query.ndim != 3 or key.ndim != 3 or value.ndim != 3:
        raise ShapeError(f"{what}: query, key and value must all be batched (N, L, E) or all "
                         f"unbatched (L, E), got shapes {query.shape}, {key.shape}, "
                         f"{value.shape}")
    n, q_len = query.shape[:2]
    if key.shape[0] != n or value.shape[0] != n or key.shape[1] != value.shape[1]:
        raise ShapeError(f"{what}: query {query.shape}, key {key.shape} and value "
                         f"{value.shape} must share the batch size, key and value the length")
    k_len = key.shape[1]
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (n, k_len):
        raise ShapeError(f"{what}: key_padding_mask must be (N, S) = {(n, k_len)}, got "
                         f"{tuple(key_padding_mask.shape)}")
    if attn_mask is not None and tuple(attn_mask.shape) not in ((q_len, k_len),
                                                                (n * heads, q_len, k_len)):
        raise ShapeError(f"{what}: attn_mask must be (L, S) = {(q_len, k_len)} or "
                         f"(N * num_heads, L, S) = {(n * heads, q_len, k_len)}, got "
                         f"{tuple(attn_mask.shape)}")


def _extra_keys(k, v, bias_k, bias_v, add_zero_attn, attn_mask, key_padding_mask, is_causal,
                q_len):
    """torch's ``bias_k``/``bias_v`` and ``add_zero_attn``, which upstream's 1.13 tests check
    against torch: after the projections, one learned key and value (``bias_k``/``bias_v``,
    (1, 1, width)) and then one zero key and value join the end of every batch's sequence,
    visible to every query (the masks get a zero column for each)."""
    from .tensor import broadcast_to, concat, zeros

    n, k_len = k.shape[:2]
    if attn_mask is None and is_causal:
        attn_mask = _causal_mask(q_len, k_len, k)
    extra = []
    if bias_k is not None:
        bias_k, bias_v = _tensor(bias_k), _tensor(bias_v)
        for name, b, t in (("bias_k", bias_k, k), ("bias_v", bias_v, v)):
            if b.size != t.shape[-1]:
                raise ShapeError(f"multi_head_attention: {name} must hold one value per "
                                 f"projected width ({t.shape[-1]}), got shape {b.shape}")
        extra.append((broadcast_to(bias_k.reshape(1, 1, -1), (n, 1, k.shape[-1])),
                      broadcast_to(bias_v.reshape(1, 1, -1), (n, 1, v.shape[-1]))))
    if add_zero_attn:
        extra.append((zeros((n, 1, k.shape[-1]), k.dtype, k.device),
                      zeros((n, 1, v.shape[-1]), v.dtype, v.device)))
    k = concat([k] + [ek for ek, _ in extra], axis=1)
    v = concat([v] + [ev for _, ev in extra], axis=1)

    def pad(mask):  # one zero (visible) column per extra key
        if mask is None:
            return None
        cols = zeros(tuple(mask.shape[:-1]) + (len(extra),), mask.dtype, mask.device)
        return concat([mask, cols], axis=-1)

    return k, v, pad(attn_mask), pad(key_padding_mask), k_len + len(extra)


def _from_cudnn_style(attn_mask, key_padding_mask, query, k_len):
    """cuDNN's sequence-range masks (``maybe_cudnn_style_mask``) as boolean masks: an integer
    ``attn_mask`` (2, L) gives each query its keys [row 0, row 1); an integer
    ``key_padding_mask`` (2, N) gives each batch's query and key lengths, keys past the length
    hidden. Masks of any other form are taken as usual."""
    n, q_len = query.shape[:2]
    what = "multi_head_attention (maybe_cudnn_style_mask)"

    def ranges(mask, rows):
        if mask is None:
            return None
        mask = _tensor(mask)
        if mask.dtype.kind not in "iu" or tuple(mask.shape) != (2, rows):
            return None
        return mask.numpy().astype(np.int64)

    keys = np.arange(k_len)
    span = ranges(attn_mask, q_len)
    if span is not None:
        hidden = (keys[None, :] < span[0][:, None]) | (keys[None, :] >= span[1][:, None])
        attn_mask = Tensor(hidden, device=query.device)
    lengths = ranges(key_padding_mask, n)
    if lengths is not None:
        if (lengths[0] < q_len).any():
            raise ValueError(f"{what}: query lengths {lengths[0].tolist()} shorter than the "
                             f"query ({q_len}) are not supported; pass the queries unpadded")
        key_padding_mask = Tensor(keys[None, :] >= lengths[1][:, None], device=query.device)
    return attn_mask, key_padding_mask


class _Regroup(Op):
    """``x.reshape(split).transpose(perm).reshape(joined)`` as one op (``split``/``joined`` None:
    no reshape there): the heads taken apart, (N, T, width) to (N, heads, T, width per head)
    (views), and put back together after attention. One op where a reshape and a transpose
    were two."""
    holomorphic = True  # complex gradients (core/dispatch.py): a linear map, real coefficients

    def __init__(self, split, perm, joined):
        self.split, self.perm, self.joined = split, perm, joined

    def forward(self, x):
        self.in_shape = x.shape
        y = (x if self.split is None else x.reshape(self.split)).transpose(self.perm)
        self.mid_shape = y.shape
        return y if self.joined is None else y.reshape(self.joined)

    def _back(self, g):  # (arrays and Tensors alike)
        inverse = tuple(int(i) for i in np.argsort(self.perm))
        return g.reshape(self.mid_shape).transpose(inverse).reshape(self.in_shape)

    def backward(self, g):
        return self._back(g)

    def grad_graph(self, inputs, outputs, grads):  # higher-order gradients (core/dispatch.py)
        return (self._back(grads[0]),)


def _regroup(x, split, perm, joined):
    """`_Regroup`; in a dumpable trace its reshapes and transpose, the graph ops upstream's
    tools read."""
    if not dumpable():
        return apply(_Regroup(split, perm, joined), x)
    x = (x if split is None else x.reshape(split)).transpose(perm)
    return x if joined is None else x.reshape(joined)


def _per_head(x, projected, heads, perm):
    """(N, T, width) as (N, T, heads, width per head), then transposed by ``perm``: a projected
    input is split between the heads, an unprojected one repeated for each (upstream's
    reference)."""
    from .tensor import broadcast_to, expand_dims

    n, length, width = x.shape
    if projected:
        return _regroup(x, (n, length, heads, width // heads), perm, None)
    return broadcast_to(expand_dims(x, 2), (n, length, heads, width)).transpose(*perm)


class _Unpack(Op):
    """The pieces of one packed parameter, in order, as views of the given shapes; a piece of
    ``transposed`` is handed out transposed (the projections' ``(in, out)`` weights as linear's
    ``(out, in)``). One op where a split and a reshape per piece were nine, and backward writes
    each piece's gradient into its place of one array instead of concatenating copies."""
    holomorphic = True  # complex gradients (core/dispatch.py): a linear map, real coefficients
    none_for_unused_grads = True  # (a piece nobody used: zeros written in place)

    def __init__(self, shapes, transposed):
        self.shapes, self.transposed = shapes, transposed

    def forward(self, packed):
        flat, start, pieces = packed.reshape(-1), 0, []
        self.packed_shape = packed.shape
        for shape, turn in zip(self.shapes, self.transposed):
            end = start + math.prod(shape)
            piece = flat[start:end].reshape(shape)
            pieces.append(piece.T if turn else piece)
            start = end
        return tuple(pieces)

    def backward(self, *grads):
        like = next(g for g in grads if g is not None)
        flat, start = xp_of(like).empty(math.prod(self.packed_shape), like.dtype), 0
        for shape, turn, g in zip(self.shapes, self.transposed, grads):
            end = start + math.prod(shape)
            place = flat[start:end].reshape(shape)
            if g is None:
                place[...] = 0
            else:
                place[...] = g.T if turn else g
            start = end
        return flat.reshape(self.packed_shape)

    def grad_graph(self, inputs, outputs, grads):  # higher-order gradients (core/dispatch.py)
        from .tensor import concat, zeros

        packed = inputs[0]
        parts = [zeros(math.prod(shape), dtype=packed.dtype, device=packed.device) if g is None
                 else (g.transpose(1, 0) if turn else g).reshape(-1)
                 for shape, turn, g in zip(self.shapes, self.transposed, grads)]
        return (concat(parts).reshape(packed.shape),)


def _unpack(packed, shapes):
    """`_Unpack` of ``packed`` into pieces of ``shapes`` (the 2-d ones transposed); in a
    dumpable trace one Split, a Reshape per piece and a Dimshuffle per weight, the graph ops
    upstream's tools read."""
    turned = tuple(len(shape) == 2 for shape in shapes)
    if not dumpable():
        return apply(_Unpack(tuple(shapes), turned), packed)
    from .tensor import split

    sizes = [math.prod(shape) for shape in shapes]
    flat = packed.reshape(-1)
    parts = split(flat, np.cumsum(sizes)[:-1].tolist()) if len(sizes) > 1 else [flat]
    return [p.reshape(shape).transpose(1, 0) if turn else p.reshape(shape)
            for p, shape, turn in zip(parts, shapes, turned)]


def _split_io_weight_bias(io_weight_bias, sizes, biases):
    """The projection weights (as linear's ``(out, in)``) and biases in upstream's packed order,
    as views of the one tensor."""
    packed = _tensor([] if io_weight_bias is None else io_weight_bias)  # (None: no values)
    shapes = [(i, o) for i, o in sizes] + [(o,) if b else None for (_, o), b in zip(sizes, biases)]
    shapes = [None if shape is None or shape[-1] == 0 else shape for shape in shapes]
    need = sum(math.prod(shape) for shape in shapes if shape is not None)
    if need != packed.size:
        raise ShapeError(f"multi_head_attention: io_weight_bias holds {packed.size} values, "
                         f"the projections given need {need} (weights (in, out): {sizes}; "
                         f"biases q, k, v, o: {biases})")
    present = [shape for shape in shapes if shape is not None]
    pieces = iter(_unpack(packed, present) if present else ())
    parts = [None if shape is None else next(pieces) for shape in shapes]
    return parts[:4], parts[4:]


@_amp.not_covered  # upstream's MultiHeadAttn op: autocast leaves it alone
def multi_head_attention(query: Tensor, key: Tensor, value: Tensor, embed_dim: int,
                         num_heads: int, attn_drop: float, out_drop: float,
                         io_weight_bias: Optional[Tensor], qproj_size: Optional[int] = None,
                         kproj_size: Optional[int] = None, vproj_size: Optional[int] = None,
                         oproj_size: Optional[int] = None, qbias: bool = False,
                         kbias: bool = False, vbias: bool = False, obias: bool = False,
                         bias_k: Optional[Tensor] = None, bias_v: Optional[Tensor] = None,
                         add_zero_attn: bool = False, key_padding_mask: Optional[Tensor] = None,
                         attn_mask: Optional[Tensor] = None, need_weights: bool = False,
                         average_attn_weights: bool = False, is_causal: bool = False,
                         maybe_cudnn_style_mask: bool = False, reslink: bool = False,
                         training: bool = True):
    """Scaled dot-product attention of ``num_heads`` heads over projected query, key and value,
    then an output projection (see the module docstring for ``io_weight_bias``'s layout).

    ``query`` (N, L, E) (or (L, E), treated as a batch of one, as upstream does), ``key`` and
    ``value`` (N, S, Ek/Ev). A ``*proj_size`` of 0 skips that projection; ``q/k/v/obias`` say
    which biases ``io_weight_bias`` holds. Masks: boolean True (or -inf in a float mask) hides a
    key; ``attn_mask`` is (L, S) or (N * num_heads, L, S), ``key_padding_mask`` (N, S);
    ``is_causal`` without masks hides the keys after each query. ``bias_k``/``bias_v``
    ((1, 1, width) each) and ``add_zero_attn`` append one learned and one zero key/value to
    every sequence, as torch's. A ``*proj_size`` of 0 gives every head the whole unprojected
    input (so the heads' outputs join to ``num_heads * vdim``); ``reslink`` adds the query to
    the output. Dropout ``attn_drop`` on the
    attention weights and ``out_drop`` on the output apply when ``training``.

    Returns ``(output, weights)``: output (N, L, oproj_size); weights ``None`` unless
    ``need_weights``, then (N * num_heads, L, S), or (N, L, S) averaged over heads with
    ``average_attn_weights``.
    """
    from .math import matmul
    from .nn import dropout, linear, softmax
    from .tensor import expand_dims

    what = "multi_head_attention"
    if (bias_k is None) != (bias_v is None):
        raise ValueError(f"{what}: bias_k and bias_v come together (one extra key and value "
                         f"per batch); got only {'bias_k' if bias_v is None else 'bias_v'}")
    query, key, value = _tensor(query), _tensor(key), _tensor(value)
    # float16 computes in float32 and rounds the outputs once, as one op (upstream's
    # MultiHeadAttn): its float16 steps each rounded (the projections' bias adds twice), up to
    # 2.5x torch's float16 error (--float16 fuzz case 51311). An empty packed tensor (float32
    # from M.MultiHeadAttention) holds no values: it leaves the attention float16
    given = [t for t in (query, key, value, io_weight_bias, bias_k, bias_v) if t is not None]
    half = all(t.dtype == np.float16 or (t is io_weight_bias and t.size == 0) for t in given)
    if half:
        query, key, value = (t.astype("float32") for t in (query, key, value))
        if io_weight_bias is not None:
            io_weight_bias = _tensor(io_weight_bias).astype("float32")
        if bias_k is not None and bias_v is not None:
            bias_k, bias_v = _tensor(bias_k).astype("float32"), _tensor(bias_v).astype("float32")
    if query.ndim == 2:
        query, key, value = (expand_dims(t, 0) for t in (query, key, value))
        if key_padding_mask is not None and not maybe_cudnn_style_mask:
            key_padding_mask = expand_dims(_tensor(key_padding_mask), 0)
    if maybe_cudnn_style_mask:
        attn_mask, key_padding_mask = _from_cudnn_style(attn_mask, key_padding_mask, query,
                                                        key.shape[1])
    heads = int(num_heads)
    key_padding_mask = _float_mask(key_padding_mask, "key_padding_mask", query.dtype)
    attn_mask = _float_mask(attn_mask, "attn_mask", query.dtype)
    _check_shapes(query, key, value, key_padding_mask, attn_mask, heads)
    n, q_len, q_in = query.shape
    k_len, k_in, v_in = key.shape[1], key.shape[2], value.shape[2]
    qproj = embed_dim if qproj_size is None else int(qproj_size)
    kproj = embed_dim if kproj_size is None else int(kproj_size)
    vproj = embed_dim if vproj_size is None else int(vproj_size)
    oproj = embed_dim if oproj_size is None else int(oproj_size)
    # an unprojected input is repeated for every head (upstream's reference in its 1.13 test:
    # each head sees the whole width), so the heads' outputs join to num_heads * vdim
    o_in = vproj if vproj else v_in * int(num_heads)
    # (the widths cut the packed constant: a trace keeps them as they are, unguarded, since
    # another width would not fit the weights and fails in the projections, never silently;
    # a dump of an attention layer then warns of no size used as a Python value)
    widths = [concrete(w) for w in (q_in, k_in, v_in, o_in)]
    (wq, wk, wv, wo), (bq, bk, bv, bo) = _split_io_weight_bias(
        io_weight_bias, list(zip(widths, (qproj, kproj, vproj, oproj))),
        [qbias, kbias, vbias, obias])

    def project(x, w, b):  # (w is (out, in): linear's one op for the product and the bias)
        return x if w is None else linear(x, w, b)

    q, k, v = project(query, wq, bq), project(key, wk, bk), project(value, wv, bv)
    if bias_k is not None or add_zero_attn:
        k, v, attn_mask, key_padding_mask, k_len = _extra_keys(
            k, v, bias_k, bias_v, add_zero_attn, attn_mask, key_padding_mask, is_causal, q_len)
        is_causal = False  # the causal part is in attn_mask now, padded for the extra keys
    for name, t, projected in (("query", q, qproj), ("key", k, kproj), ("value", v, vproj)):
        if projected and t.shape[-1] % heads:
            raise ShapeError(f"{what}: the projected {name} width {t.shape[-1]} is not "
                             f"divisible by num_heads={heads}")
    q_width = q.shape[-1] // heads if qproj else q.shape[-1]
    k_width = k.shape[-1] // heads if kproj else k.shape[-1]
    if q_width != k_width:
        raise ShapeError(f"{what}: query and key widths per head differ ({q_width} and "
                         f"{k_width}; an unprojected input gives every head its whole width)")
    # upstream's scale: the head width of embed_dim (all of it when the query is unprojected)
    head_dim = embed_dim if qproj == 0 else embed_dim // heads
    q = _per_head(q, qproj, heads, (0, 2, 1, 3))
    k = _per_head(k, kproj, heads, (0, 2, 3, 1))
    v = _per_head(v, vproj, heads, (0, 2, 1, 3))
    scores = matmul(q, k) * float(head_dim) ** -0.5  # (N, heads, L, S)
    mask = _merged_mask(attn_mask, key_padding_mask, is_causal, n, heads, q_len, k_len, scores)
    if mask is not None:
        scores = scores + mask
    weights = softmax(scores, axis=-1)
    probs = dropout(weights, attn_drop, training) if training and attn_drop else weights
    out = matmul(probs, v)  # (N, heads, L, width per head): the heads side by side
    out = _regroup(out, None, (0, 2, 1, 3), (n, q_len, out.shape[1] * out.shape[3]))
    out = project(out, wo, bo)
    if io_weight_bias is not None and wq is wk is wv is wo is bq is bk is bv is bo is None:
        # upstream's op takes the packed tensor as an input even when it holds no values, so
        # an attached one gets its (empty) gradient: its sum, 0, keeps it in the graph (in the
        # output's dtype: a float32 packed tensor leaves a float16 attention float16)
        out = out + _tensor(io_weight_bias).sum().astype(out.dtype)
    if training and out_drop:
        out = dropout(out, out_drop, training)
    if reslink:  # upstream's residual link: the query added to the output
        if tuple(out.shape) != tuple(query.shape):
            raise ShapeError(f"{what}: reslink adds the query {tuple(query.shape)} to the "
                             f"output {tuple(out.shape)}; their shapes must match")
        out = out + query
    if half:
        out = out.astype("float16")
    if not need_weights:
        return out, None
    weights = weights.mean(axis=1) if average_attn_weights else \
        weights.reshape(n * heads, q_len, k_len)
    return out, weights.astype("float16") if half else weights
