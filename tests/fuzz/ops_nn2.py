"""Fuzz generators for the F.nn ops ops_nn.py does not draw: conv_transpose3d,
region_restricted_conv, local_response_norm, general_norm, batch_norm2d, sync_batch_norm (one
process) and the functional multi_head_attention, each against torch or a by-hand torch
reference of upstream's documented semantics."""
import numpy as np
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.functional as F

from .gen import Case, like, pick, registry, shape, values

OPS, op = registry()


# ----- convolutions -----

@op("conv_transpose3d", "conv")
def _conv_transpose3d(rng):
    groups = pick(rng, [1, 1, 2])
    cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    k, s, d, p = (tuple(int(v) for v in rng.integers(lo, hi, size=3))
                  for lo, hi in ((1, 3), (1, 3), (1, 3), (0, 2)))
    opad = tuple(min(int(rng.integers(0, 2)), max(si, di) - 1) for si, di in zip(s, d))
    sp = tuple(int(v) for v in rng.integers(1, 4, size=3))
    if rng.random() < 0.9:  # mostly paddings that leave an output (the rest: refused)
        p = tuple(min(pi, (di * (ki - 1) + (i - 1) * si) // 2)
                  for pi, di, ki, i, si in zip(p, d, k, sp, s))
    x = values(rng, (int(rng.integers(1, 3)), cin) + sp, "float32")
    w = values(rng, (cin, cout // groups) + k, "float32")
    b = values(rng, (1, cout, 1, 1, 1), "float32")
    # upstream also takes the weight split by groups: (groups, in/groups, out/groups, k...)
    split = groups > 1 and rng.random() < 0.4
    out = [(i - 1) * si - 2 * pi + di * (ki - 1) + oi + 1
           for i, si, pi, di, ki, oi in zip(sp, s, p, d, k, opad)]

    def m(a, ww, bb):
        if split:
            ww = ww.reshape(groups, cin // groups, *ww.shape[1:])
        return F.conv_transpose3d(a, ww, bb, s, p, opad, d, groups)
    return Case(f"conv_transpose3d(x{x.shape}, w{w.shape}{' split' if split else ''}, "
                f"stride={s}, padding={p}, output_padding={opad}, dilation={d}, "
                f"groups={groups})", [x, w, b], m,
                lambda a, ww, bb: TF.conv_transpose3d(a, ww, bb.reshape(-1), s, p, opad, groups,
                                                      d),
                tol=(2e-4, 2e-4), refuse="no output" if min(out) <= 0 else None)


def _rr_conv_ref(x, w, rin, rout, b, stride, pad, dil, groups):
    """Region-restricted convolution by unfolded windows: each tap counts only where the input
    pixel's region id equals the output pixel's (padding reads 0, whatever its region)."""
    n, c = x.shape[:2]
    kh, kw = w.shape[-2:]
    cols = TF.unfold(x, (kh, kw), dil, pad, stride)  # (N, C*KH*KW, L)
    rcols = TF.unfold(rin[:, None].double(), (kh, kw), dil, pad, stride)  # (N, KH*KW, L)
    keep = (rcols == rout.reshape(n, 1, -1).double()).to(x.dtype)
    cols = cols.reshape(n, groups, c // groups, kh * kw, -1) * keep[:, None, None]
    wg = w.reshape(groups, w.shape[1], -1)  # (G, O/G, C/G*KH*KW)
    out = torch.einsum("gok,ngkl->ngol", wg, cols.reshape(n, groups, -1, cols.shape[-1]))
    oh, ow = rout.shape[1:]
    out = out.reshape(n, -1, oh, ow)
    return out if b is None else out + b


@op("region_restricted_conv", "conv")
def _region_restricted_conv(rng):
    groups = pick(rng, [1, 2, 3])
    cin = groups * int(rng.integers(1, 3))
    opg = int(rng.integers(1, 3))
    k = tuple(int(v) for v in rng.integers(1, 4, size=2))
    s = (1, 1)  # upstream's kernels have no other stride
    d = tuple(int(v) for v in rng.integers(1, 3, size=2))
    p = tuple(int(rng.integers(0, kk)) for kk in k)
    n = int(rng.integers(1, 3))
    hw = tuple(max(int(rng.integers(1, 7)), di * (ki - 1) + 1 - 2 * pi)
               for di, ki, pi in zip(d, k, p))
    out = tuple((i + 2 * pi - di * (ki - 1) - 1) // si + 1
                for i, pi, di, ki, si in zip(hw, p, d, k, s))
    regions = int(rng.integers(1, 4))
    rdt = pick(rng, [np.int32, np.uint8])
    x = values(rng, (n, cin) + hw, "float32")
    w = values(rng, (groups, opg, cin // groups) + k, "float32")
    rin = rng.integers(0, regions, size=(n,) + hw).astype(rdt)
    rout = rng.integers(0, regions, size=(n,) + out).astype(rdt)
    has_bias = bool(rng.random() < 0.5)
    b = values(rng, (1, groups * opg, 1, 1), "float32")
    return Case(f"region_restricted_conv(x{x.shape}, w{w.shape}, rin {rdt.__name__}, "
                f"{regions} regions, bias={has_bias}, stride={s}, padding={p}, dilation={d}, "
                f"groups={groups})", [x, w, rin, rout, b],
                lambda a, ww, ri, ro, bb: F.region_restricted_conv(
                    a, ww, ri, ro, bb if has_bias else None, s, p, d, groups),
                lambda a, ww, ri, ro, bb: _rr_conv_ref(a, ww, ri, ro, bb if has_bias else None,
                                                       s, p, d, groups),
                diff=[0, 1, 4] if has_bias else [0, 1],
                tol=(2e-4, 2e-4))


# ----- normalizations -----

@op("local_response_norm", "normalization")
def _lrn(rng):
    shp = (int(rng.integers(1, 3)), int(rng.integers(1, 6))) + shape(rng, 1, 3, zero=False,
                                                                      max_dim=3)
    size = pick(rng, [1, 3, 5])
    refuse = None
    if rng.random() < 0.08:  # upstream's LRN asserts an odd window (torch takes even ones)
        size, refuse = pick(rng, [2, 4]), "an even kernel_size"
    k, alpha, beta = pick(rng, [2.0, 1.0, 0.5]), pick(rng, [1e-4, 0.1, 0.5]), \
        pick(rng, [0.75, 0.5, 1.0])
    x = values(rng, shp, "float32")
    # upstream's alpha multiplies the plain sum of squares; torch's divides it by the window.
    # (.contiguous(): torch's 5-d path views a permuted input and refuses it)
    return Case(f"local_response_norm(x{shp}, {size}, k={k}, alpha={alpha}, beta={beta})", [x],
                lambda a: F.nn.local_response_norm(a, size, k, alpha, beta),
                lambda a: TF.local_response_norm(a.contiguous(), size, alpha * size, beta, k),
                tol=(2e-4, 2e-5), refuse=refuse)


def normalized_axes(rng):
    """(shape, its sorted axes to normalize, those axes as passed: some counted from the end)
    for general_norm and GeneralNorm."""
    shp = shape(rng, 1, 4, zero=False)
    nd = len(shp)
    axes = sorted(int(a) for a in rng.choice(nd, size=int(rng.integers(1, nd + 1)),
                                             replace=False))
    return shp, axes, [a - nd if rng.random() < 0.3 else a for a in axes]


@op("general_norm", "normalization")
def _general_norm(rng):
    shp, axes, arg = normalized_axes(rng)
    nd = len(shp)
    arg = arg[0] if len(arg) == 1 and rng.random() < 0.5 else arg
    refuse = None
    if len(axes) > 1 and rng.random() < 0.08:
        arg, refuse = list(reversed(axes)), "axes not increasing (upstream asserts the order)"
    affine = bool(rng.random() < 0.6)
    ns = tuple(shp[a] for a in axes)
    m = int(np.prod(ns))
    # a spread inside each normalized group (see ops_nn's layer_norm: a nearly constant group
    # makes the gradient ill-conditioned)
    spread = np.expand_dims(rng.permutation(m).reshape(ns).astype(np.float32),
                            [i for i in range(nd) if i not in axes])
    x = (values(rng, shp, "float32", -0.3, 0.3) + spread).astype(np.float32)
    w, b = values(rng, ns, "float32"), values(rng, ns, "float32")
    wshape = [shp[i] if i in axes else 1 for i in range(nd)]

    def t(a, ww, bb):
        mean = a.mean(axes, keepdim=True)
        var = a.var(axes, correction=0, keepdim=True)
        y = (a - mean) / torch.sqrt(var + 1e-5)
        return y * ww.reshape(wshape) + bb.reshape(wshape) if affine else y
    return Case(f"general_norm(x{shp}, {arg}, affine={affine})", [x, w, b],
                lambda a, ww, bb: F.nn.general_norm(a, arg, affine, ww if affine else None,
                                                    bb if affine else None), t,
                diff=[0, 1, 2] if affine else [0], tol=(5e-4, 2e-4) if m > 1 else (5e-4, 1e-3),
                refuse=refuse, bcast=False)


def _bn_stats_ref(a, rm, rv, momentum, eps, training, eps_max, ww, bb):
    """Batch norm by hand in upstream's conventions: ``momentum`` weighs the old running value;
    the running variance is unbiased; ``eps_max`` divides by sqrt(max(var, eps))."""
    c = a.shape[1]
    axes = [0] + list(range(2, a.ndim))
    pshape = (1, c) + (1,) * (a.ndim - 2)
    if training:
        mean = a.mean(axes, keepdim=True)
        var = a.var(axes, correction=0, keepdim=True)
        cnt = a.numel() // c
        new_rm = rm * momentum + mean.detach() * (1 - momentum)
        new_rv = rv * momentum + var.detach() * cnt / max(cnt - 1, 1) * (1 - momentum)
    else:
        mean, var, new_rm, new_rv = rm, rv, rm, rv
    den = torch.sqrt(torch.clamp_min(var, eps) if eps_max else var + eps)
    y = (a - mean) / den * ww.reshape(pshape) + bb.reshape(pshape)
    return y, new_rm, new_rv


def _bn_gen(name):
    def gen(rng):
        c = int(rng.integers(1, 4))
        if name == "batch_norm2d":
            spatial = tuple(int(v) for v in rng.integers(1, 4, size=2))
        else:  # sync_batch_norm takes any (N, C, ...)
            spatial = shape(rng, 0, 2, zero=False)
        n = int(rng.integers(2, 4))
        shp = (n, c) + spatial
        training = bool(rng.random() < 0.6)
        momentum = pick(rng, [0.9, 0.5])
        eps_mode = pick(rng, ["additive", "max"]) if name == "sync_batch_norm" else "additive"
        eps = pick(rng, [1e-5, 0.5]) if eps_mode == "max" else 1e-5
        refuse = None
        if name == "batch_norm2d" and rng.random() < 0.08:
            shp, refuse = shp[:3], "batch_norm2d of a 3-d input (F.batch_norm takes it)"
        pshape = (1, c) + (1,) * (len(shp) - 2)
        x = values(rng, shp, "float32")
        stats_axes = (0,) + tuple(range(2, len(shp)))
        while training and x.var(stats_axes).min() < 1e-2:
            # a channel of nearly equal values: normalising divides by its tiny deviation, so
            # both engines' float32 gradients are rounding noise there (two values 0.03 apart
            # gave 2e-3 against torch's 2.5e-3, where the exact gradient is 0): drawn again
            x = values(rng, shp, "float32")
        w, b = values(rng, (c,), "float32"), values(rng, (c,), "float32")
        rm0, rv0 = values(rng, pshape, "float32"), values(rng, pshape, "float32", 0.5, 2)

        def m(a, ww, bb):
            rm, rv = like(rm0, a), like(rv0, a)  # updated in place when training
            if name == "batch_norm2d":
                y = F.batch_norm2d(a, rm, rv, ww.reshape(pshape), bb.reshape(pshape),
                                   training, momentum, eps)
            else:
                y = F.nn.sync_batch_norm(a, rm, rv, ww, bb, training=training,
                                         momentum=momentum, eps=eps, eps_mode=eps_mode)
            return y, rm, rv

        def t(a, ww, bb):
            return _bn_stats_ref(a, like(rm0, a), like(rv0, a), momentum, eps,
                                 training, eps_mode == "max", ww, bb)
        return Case(f"{name}(x{shp}, training={training}, momentum={momentum}, eps={eps}, "
                    f"eps_mode={eps_mode})", [x, w, b], m, t, tol=(5e-4, 2e-4), refuse=refuse,
                    bcast=False)
    return gen


op("batch_norm2d", "normalization")(_bn_gen("batch_norm2d"))
op("sync_batch_norm", "normalization")(_bn_gen("sync_batch_norm"))


# ----- attention -----

@op("multi_head_attention", "matmul")
def _mha(rng):
    heads = int(rng.integers(1, 3))
    e = heads * int(rng.integers(1, 3))
    kdim = e if rng.random() < 0.6 else int(rng.integers(1, 4))
    vdim = e if rng.random() < 0.6 else int(rng.integers(1, 4))
    n, q_len, k_len = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    qb, kb, vb, ob = (bool(rng.random() < 0.5) for _ in range(4))
    extra_kv = bool(rng.random() < 0.25)
    zero_attn = bool(rng.random() < 0.25)
    need = bool(rng.random() < 0.4)
    average = need and bool(rng.random() < 0.5)
    kpm = None
    if rng.random() < 0.4:  # True hides a key; key 0 stays visible to every query
        kpm = rng.random((n, k_len)) < 0.4
        kpm[:, 0] = False
    amask = None
    causal = False
    r = rng.random()
    if r < 0.3:
        amask = rng.random((q_len, k_len)) < 0.4
        amask[:, 0] = False
    elif r < 0.45 and kpm is None:
        causal = True  # (upstream: is_causal applies when no key padding mask is given)
    xs = [values(rng, (n, q_len, e), "float32", -1, 1),
          values(rng, (n, k_len, kdim), "float32", -1, 1),
          values(rng, (n, k_len, vdim), "float32", -1, 1)]
    sizes = [(e, e), (kdim, e), (vdim, e), (e, e)]
    ws = [values(rng, s_, "float32", -0.6, 0.6) for s_ in sizes]  # upstream's (in, out)
    bs = [values(rng, (e,), "float32", -0.5, 0.5) for _ in range(4)]
    flags = [qb, kb, vb, ob]
    packed = np.concatenate([w.ravel() for w in ws] + [b_ for b_, f in zip(bs, flags) if f])
    bias_kv = [values(rng, (1, 1, e), "float32", -1, 1) for _ in range(2)]

    def m(q, k, v, iw, bk, bv):
        out, wts = F.nn.multi_head_attention(
            q, k, v, e, heads, 0.0, 0.0, iw, qbias=qb, kbias=kb, vbias=vb, obias=ob,
            bias_k=bk if extra_kv else None, bias_v=bv if extra_kv else None,
            add_zero_attn=zero_attn, key_padding_mask=None if kpm is None else mge.tensor(kpm),
            attn_mask=None if amask is None else mge.tensor(amask), need_weights=need,
            average_attn_weights=average, is_causal=causal)
        return (out, wts) if need else out

    def t(q, k, v, iw, bk, bv):
        # torch's (out, in) weights, time-major inputs; the flat tensor is split as upstream's
        # layout says, so a wrong packing order shows as a wrong value
        parts, at = [], 0
        for s_ in sizes:
            parts.append(iw[at:at + s_[0] * s_[1]].reshape(s_).t())
            at += s_[0] * s_[1]
        biases = []
        for f in flags:
            biases.append(iw[at:at + e] if f else torch.zeros(e, dtype=iw.dtype))
            at += e if f else 0
        mask = amask
        if causal:
            mask = np.triu(np.ones((q_len, k_len), bool), 1)
        out, wts = TF.multi_head_attention_forward(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), e, heads, None,
            torch.cat(biases[:3]), bk.reshape(1, 1, e) if extra_kv else None,
            bv.reshape(1, 1, e) if extra_kv else None, zero_attn, 0.0, parts[3], biases[3],
            training=False, key_padding_mask=None if kpm is None else torch.tensor(kpm),
            need_weights=need, attn_mask=None if mask is None else torch.tensor(mask),
            use_separate_proj_weight=True, q_proj_weight=parts[0], k_proj_weight=parts[1],
            v_proj_weight=parts[2], average_attn_weights=average)
        out = out.transpose(0, 1)
        if not need:
            return out
        return out, wts if average else wts.reshape(-1, *wts.shape[2:])
    desc = (f"multi_head_attention(q{xs[0].shape}, k{xs[1].shape}, v{xs[2].shape}, heads={heads},"
            f" biases q/k/v/o={flags}, bias_kv={extra_kv}, add_zero_attn={zero_attn}, "
            f"key_padding_mask={kpm is not None}, attn_mask={amask is not None}, "
            f"is_causal={causal}, need_weights={need}, average={average})")
    return Case(desc, xs + [packed] + bias_kv, m, t,
                diff=[0, 1, 2, 3] + ([4, 5] if extra_kv else []), tol=(5e-4, 5e-4),
                bcast=False)


@op("multi_head_attention_masks", "matmul")
def _mha_masks(rng):
    # the masks `_mha` leaves out: float (additive, with -inf hiding a key) attention and key
    # padding masks, per-batch-and-head (N * heads, L, S) attention masks, a float mask beside a
    # boolean one; and reslink (the query added to the output)
    heads = int(rng.integers(1, 4))
    e = heads * int(rng.integers(1, 3))
    n, q_len, k_len = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    flags = [bool(rng.random() < 0.5) for _ in range(4)]

    def draw_mask(shp, kind):
        if kind == "bool":
            mask = rng.random(shp) < 0.4
            mask[..., 0] = False  # (key 0 stays visible to every query)
            return mask
        mask = values(rng, shp, "float32", -2, 2)
        mask[(rng.random(shp) < 0.3) & (np.arange(shp[-1]) > 0)] = -np.inf
        return mask
    amask = kpm = None
    if rng.random() < 0.8:
        amask = draw_mask((n * heads, q_len, k_len) if rng.random() < 0.5 else (q_len, k_len),
                          pick(rng, ["bool", "float", "float"]))
    if rng.random() < 0.5:
        kpm = draw_mask((n, k_len), pick(rng, ["bool", "float"]))
    if amask is not None and kpm is not None and amask.dtype != kpm.dtype:  # (torch wants one
        kpm = np.where(kpm, -np.inf, 0).astype(np.float32) if kpm.dtype == np.bool_ else \
            kpm == -np.inf  # kind: the key padding mask takes the attention mask's)
    reslink = bool(rng.random() < 0.4)
    need = bool(rng.random() < 0.5)
    xs = [values(rng, (n, q_len, e), "float32", -1, 1),
          values(rng, (n, k_len, e), "float32", -1, 1),
          values(rng, (n, k_len, e), "float32", -1, 1)]
    ws = [values(rng, (e, e), "float32", -0.6, 0.6) for _ in range(4)]  # upstream's (in, out)
    bs = [values(rng, (e,), "float32", -0.5, 0.5) for _ in range(4)]
    packed = np.concatenate([w.ravel() for w in ws] + [b_ for b_, f in zip(bs, flags) if f])

    def mask_of(mask, q):  # (a float mask in the query's dtype: the float modes' too)
        if mask is None or mask.dtype != np.bool_:
            return None if mask is None else like(mask, q)
        return torch.tensor(mask) if isinstance(q, torch.Tensor) else mge.tensor(mask)

    def m(q, k, v, iw):
        out, wts = F.nn.multi_head_attention(
            q, k, v, e, heads, 0.0, 0.0, iw, qbias=flags[0], kbias=flags[1], vbias=flags[2],
            obias=flags[3], key_padding_mask=mask_of(kpm, q), attn_mask=mask_of(amask, q),
            need_weights=need, reslink=reslink)
        return (out, wts) if need else out

    def t(q, k, v, iw):
        parts = [iw[i * e * e:(i + 1) * e * e].reshape(e, e).t() for i in range(4)]
        at, biases = 4 * e * e, []
        for f in flags:
            biases.append(iw[at:at + e] if f else torch.zeros(e, dtype=iw.dtype))
            at += e if f else 0
        out, wts = TF.multi_head_attention_forward(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), e, heads, None,
            torch.cat(biases[:3]), None, None, False, 0.0, parts[3], biases[3], training=False,
            key_padding_mask=mask_of(kpm, q), need_weights=need, attn_mask=mask_of(amask, q),
            use_separate_proj_weight=True, q_proj_weight=parts[0], k_proj_weight=parts[1],
            v_proj_weight=parts[2], average_attn_weights=False)
        out = out.transpose(0, 1) + (q if reslink else 0)
        return (out, wts.reshape(-1, *wts.shape[2:])) if need else out
    desc = (f"multi_head_attention(q{xs[0].shape}, k{xs[1].shape}, heads={heads}, biases={flags}, "
            f"attn_mask={None if amask is None else (amask.dtype, amask.shape)}, key_padding_mask="
            f"{None if kpm is None else kpm.dtype}, reslink={reslink}, need_weights={need})")
    return Case(desc, xs + [packed], m, t, tol=(5e-4, 5e-4), bcast=False)
