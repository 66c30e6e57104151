"""Fuzz generators for what the first round left out of megengine.functional: F.vision (remap,
warp_perspective against grid_sample, nms against a greedy numpy oracle), sliding windows and
untied (local) convolution against torch's unfold/fold, ctc_loss, and linear algebra (cross,
matinv, svd)."""
import numpy as np
import torch
import torch.nn.functional as TF

import megengine as mge
import megengine.functional as F

from .gen import Case, pick, registry, values

OPS, op = registry()


# ----- sampling: remap and warp_perspective as torch's grid_sample -----

_PAD = {"replicate": "border", "constant": "zeros"}  # (constant with scalar 0)


def _grid_sample(img, xy, border):
    """Sample NCHW ``img`` at absolute pixel coordinates ``xy`` (N, OH, OW, 2) bilinearly:
    align_corners=True makes -1 and 1 the centres of the first and last pixels."""
    h, w = img.shape[2], img.shape[3]
    scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=xy.dtype)
    return TF.grid_sample(img, xy * scale - 1, mode="bilinear", padding_mode=_PAD[border],
                          align_corners=True)


def _no_integer(a, lo=0.05):
    # a coordinate on a whole pixel is a kink of bilinear sampling (one-sided gradients)
    frac = a - np.floor(a)
    return np.where(frac < lo, a + 2 * lo, np.where(frac > 1 - lo, a - 2 * lo, a)).astype(a.dtype)


@op("remap", "vision")
def _remap(rng):
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    h, w = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    oh, ow = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    border = pick(rng, list(_PAD))
    x = values(rng, (n, c, h, w), "float32")
    # coordinates inside and up to 1.5 pixels outside the image
    xy = np.stack([values(rng, (n, oh, ow), "float32", -1.5, w + 0.5),
                   values(rng, (n, oh, ow), "float32", -1.5, h + 0.5)], -1)
    xy = _no_integer(xy)
    return Case(f"remap(x{x.shape}, map{xy.shape}, border_mode={border})", [x, xy],
                lambda a, m: F.vision.remap(a, m, border_mode=border, scalar=0.0),
                lambda a, m: _grid_sample(a, m, border), tol=(2e-4, 2e-4), bcast=False)


@op("warp_perspective", "vision")
def _warp_perspective(rng):
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    h, w = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    oh, ow = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    border = pick(rng, list(_PAD))
    x = values(rng, (n, c, h, w), "float32")
    # near a random similarity, with a mild perspective row (the denominator stays near 1)
    m = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
    m[:, :2, :2] += values(rng, (n, 2, 2), "float32", -0.4, 0.4)
    m[:, :2, 2] = values(rng, (n, 2), "float32", -1, 1.5)
    m[:, 2, :2] = values(rng, (n, 2), "float32", -0.05, 0.05)

    def torch_fn(a, mat):
        ys, xs = torch.meshgrid(torch.arange(oh, dtype=mat.dtype),
                                torch.arange(ow, dtype=mat.dtype), indexing="ij")
        pts = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # (OH, OW, 3)
        src = torch.einsum("nij,hwj->nhwi", mat, pts)
        return _grid_sample(a, src[..., :2] / src[..., 2:], border)
    # source points that land on whole pixels are kinks: keep cases whose points avoid them
    ys, xs = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    pts = np.stack([xs, ys, np.ones_like(xs)], -1).astype(np.float32)
    src = np.einsum("nij,hwj->nhwi", m, pts)
    src = src[..., :2] / src[..., 2:]
    frac = src - np.floor(src)
    kink = bool(((frac < 0.02) | (frac > 0.98)).any())
    return Case(f"warp_perspective(x{x.shape}, mat{m.shape}, ({oh}, {ow}), {border})", [x, m],
                lambda a, mat: F.vision.warp_perspective(a, mat, (oh, ow), border_mode=border,
                                                         border_val=0.0),
                torch_fn, tol=(5e-4, 5e-4), diff=[0] if kink else [0, 1], bcast=False,
                layouts=False)


# ----- nms: a greedy oracle in numpy (torchvision is not a dependency) -----

def _nms_oracle(boxes, scores, thresh, max_out):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if len(keep) == max_out:
            break
        ok = True
        for j in keep:
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            inter = max(iw, 0) * max(ih, 0)
            union = ((boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
                     + (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1]) - inter)
            if union > 0 and inter / union > thresh:
                ok = False
                break
        if ok:
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int32)


@op("nms", "vision")
def _nms(rng):
    k = int(rng.integers(0, 9))
    xy = values(rng, (k, 2), "float32", 0, 6)
    wh = values(rng, (k, 2), "float32", 0.5, 4)
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.permutation(k).astype(np.float32) / max(k, 1)  # distinct: no ties
    thresh = float(rng.uniform(0.05, 0.8))
    max_out = None if rng.random() < 0.5 else int(rng.integers(1, k + 2))
    return Case(f"nms({k} boxes, iou_thresh={thresh:.3f}, max_output={max_out})",
                [boxes, scores],
                lambda b, s: F.vision.nms(b, s, thresh, max_out),
                lambda b, s: _nms_oracle(b.detach().numpy(), s.detach().numpy(), thresh,
                                         k if max_out is None else max_out),
                diff=[], layouts=False)


# ----- sliding windows and untied convolution: torch's unfold / fold -----

def _window_args(rng):
    k = tuple(int(v) for v in rng.integers(1, 4, size=2))
    s = tuple(int(v) for v in rng.integers(1, 3, size=2))
    d = tuple(int(v) for v in rng.integers(1, 3, size=2))
    p = tuple(int(rng.integers(0, kk)) for kk in k)
    return k, p, s, d


def _out(size, k, p, s, d):
    return tuple((n + 2 * pp - dd * (kk - 1) - 1) // ss + 1
                 for n, kk, pp, ss, dd in zip(size, k, p, s, d))


@op("sliding_window", "conv")
def _sliding_window(rng):
    k, p, s, d = _window_args(rng)
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    hw = tuple(int(v) for v in rng.integers(1, 6, size=2))
    oh, ow = _out(hw, k, p, s, d)
    x = values(rng, (n, c) + hw, "float32")

    def torch_fn(a):
        cols = TF.unfold(a, k, dilation=d, padding=p, stride=s)  # (N, C*KH*KW, OH*OW)
        return cols.reshape(n, c, k[0], k[1], oh, ow).permute(0, 1, 4, 5, 2, 3)
    refuse = "no window fits" if min(oh, ow) <= 0 else None
    return Case(f"sliding_window(x{x.shape}, k={k}, p={p}, s={s}, d={d})", [x],
                lambda a: F.sliding_window(a, k, p, s, d), torch_fn, refuse=refuse)


@op("sliding_window_transpose", "conv")
def _sliding_window_transpose(rng):
    k, p, s, d = _window_args(rng)
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    hw = tuple(int(v) for v in rng.integers(1, 6, size=2))
    oh, ow = _out(hw, k, p, s, d)
    if min(oh, ow) <= 0:
        hw = tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d))
        oh, ow = _out(hw, k, p, s, d)
    cols = values(rng, (n, c, oh, ow) + k, "float32")

    def torch_fn(a):
        flat = a.permute(0, 1, 4, 5, 2, 3).reshape(n, c * k[0] * k[1], oh * ow)
        return TF.fold(flat, hw, k, dilation=d, padding=p, stride=s)
    return Case(f"sliding_window_transpose(cols{cols.shape}, out={hw}, k={k}, p={p}, s={s}, "
                f"d={d})", [cols], lambda a: F.sliding_window_transpose(a, hw, k, p, s, d),
                torch_fn)


@op("local_conv2d", "conv")
def _local_conv2d(rng):
    k, p, s, d = _window_args(rng)
    n, c, o = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
    hw = tuple(int(v) for v in rng.integers(1, 6, size=2))
    oh, ow = _out(hw, k, p, s, d)
    if min(oh, ow) <= 0:
        hw = tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d))
        oh, ow = _out(hw, k, p, s, d)
    x = values(rng, (n, c) + hw, "float32")
    w = values(rng, (oh, ow, c) + k + (o,), "float32")

    def torch_fn(a, ww):
        cols = TF.unfold(a, k, dilation=d, padding=p, stride=s)
        cols = cols.reshape(n, c, k[0], k[1], oh, ow)
        return torch.einsum("ncijhw,hwcijo->nohw", cols, ww)
    return Case(f"local_conv2d(x{x.shape}, w{w.shape}, p={p}, s={s}, d={d})", [x, w],
                lambda a, ww: F.local_conv2d(a, ww, None, s, p, d), torch_fn,
                tol=(2e-4, 2e-4))


# ----- ctc_loss: upstream takes probabilities, torch log-probabilities -----

def _ctc_oracle(prob, pred_len, labels, lab_len, blank, reduction):
    """CTC by its definition, in differentiable torch ops: the forward (alpha) recursion in log
    space over the blank-extended label. (torch's ctc_loss has the right value, but its
    gradient in log_probs is that of log_softmax's input: exp(log_probs) - posterior, right only
    behind a log_softmax; upstream's loss is differentiated in the probabilities themselves.)
    Upstream's rules: a label equal to ``blank`` is a symbol like the others (only the
    interleaved blanks cannot be jumped onto), and the positions a path cannot start from begin
    at the smallest normal probability, not zero, so a label too long for its frames costs a
    finite loss."""
    lp = torch.log(prob)
    start = torch.tensor(float(np.log(np.finfo(np.float32).tiny)), dtype=lp.dtype)
    losses = []
    for i in range(prob.shape[1]):
        ext = [blank]
        for v in labels[i, :lab_len[i]]:
            ext += [int(v), blank]
        s_len = len(ext)
        alpha = [lp[0, i, ext[0]], lp[0, i, ext[1]]] + [start] * (s_len - 2)
        for t in range(1, int(pred_len[i])):
            new = []
            for s in range(s_len):
                terms = [alpha[s]] + ([alpha[s - 1]] if s >= 1 else [])
                if s % 2 and s >= 2 and ext[s] != ext[s - 2]:  # (a label, not a blank)
                    terms.append(alpha[s - 2])
                new.append(torch.logsumexp(torch.stack(terms), 0) + lp[t, i, ext[s]])
            alpha = new
        losses.append(-torch.logsumexp(torch.stack(alpha[-2:]), 0))
    loss = torch.stack(losses)
    if reduction == "mean":
        return (loss / torch.tensor(lab_len, dtype=loss.dtype)).mean()
    return loss.sum() if reduction == "sum" else loss


@op("ctc_loss", "loss")
def _ctc(rng):
    return _ctc_case(rng, concat=False)


@op("ctc_loss_concat", "loss")
def _ctc_concat(rng):
    # the labels as upstream's other form: one (sum of label_lengths,) concatenation, with the
    # lengths given as int32 tensors
    return _ctc_case(rng, concat=True)


def _ctc_case(rng, concat):
    n, c = int(rng.integers(1, 4)), int(rng.integers(2, 5))
    blank = int(rng.integers(0, c))
    lab_len = rng.integers(1, 4, size=n)
    # mostly enough frames for every alignment (repeats need a blank between them); sometimes
    # too few (upstream's finite loss of an impossible alignment)
    low = 1 if rng.random() < 0.2 else 2
    pred_len = np.array([int(rng.integers(low * ll, 2 * ll + 4)) for ll in lab_len])
    t = int(pred_len.max())
    labels = np.zeros((n, int(lab_len.max())), np.int32)
    with_blank = rng.random() < 0.3  # a label equal to blank: an ordinary symbol upstream
    for i, ll in enumerate(lab_len):
        labels[i, :ll] = rng.choice([v for v in range(c) if with_blank or v != blank], size=ll)
    logits = values(rng, (t, n, c), "float32", -2, 2)
    prob = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    reduction = pick(rng, ["mean", "sum", "none"])
    pl, ll_ = pred_len.astype(np.int32), lab_len.astype(np.int32)
    given = labels
    if concat:
        given = np.concatenate([labels[i, :ll] for i, ll in enumerate(lab_len)])

    def m(p):
        lengths = (mge.tensor(pl), mge.tensor(ll_)) if concat else (pl, ll_)
        return F.nn.ctc_loss(p, lengths[0], given, lengths[1], blank=blank, reduction=reduction)
    return Case(f"ctc_loss(pred{prob.shape}, pred_len={pl}, labels={given.tolist()}, "
                f"label_len={ll_}, blank={blank}, {reduction})", [prob], m,
                lambda p: _ctc_oracle(p, pl, labels, ll_, blank, reduction),
                tol=(5e-4, 5e-4), bcast=False)


# ----- linear algebra -----

@op("cross", "matmul")
def _cross(rng):
    ndim = int(rng.integers(1, 4))
    shp = [int(v) for v in rng.integers(1, 4, size=ndim)]
    ax = int(rng.integers(ndim))
    shp[ax] = 3
    a = values(rng, tuple(shp), "float32")
    bshp = [1 if (i != ax and rng.random() < 0.3) else v for i, v in enumerate(shp)]
    b = values(rng, tuple(bshp), "float32")
    return Case(f"cross(a{a.shape}, b{b.shape}, axis={ax})", [a, b],
                lambda x, y: F.cross(x, y, axis=ax),
                lambda x, y: torch.linalg.cross(*torch.broadcast_tensors(x, y), dim=ax))


@op("matinv", "matmul")
def _matinv(rng):
    batch = tuple(int(v) for v in rng.integers(1, 3, size=int(rng.integers(0, 3))))
    k = int(rng.integers(1, 5))
    # well conditioned: identity plus a small random matrix
    a = (np.eye(k) * 2 + values(rng, batch + (k, k), "float32", -0.6, 0.6)).astype(np.float32)
    return Case(f"matinv(x{a.shape})", [a], F.matinv, torch.linalg.inv, tol=(5e-4, 5e-4),
                bcast=False)


@op("svd", "matmul")
def _svd(rng):
    batch = tuple(int(v) for v in rng.integers(1, 3, size=int(rng.integers(0, 2))))
    m, k = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    a = values(rng, batch + (m, k), "float32")
    # singular values only: the vectors are unique up to signs, which may legitimately differ
    return Case(f"svd(x{a.shape}, compute_uv=False)", [a],
                lambda x: F.svd(x, compute_uv=False), torch.linalg.svdvals,
                tol=(5e-4, 5e-4), bcast=False)


# ----- deformable convolution: each tap sampled by grid_sample, then a plain contraction -----

def _deform_oracle(x, w, off, mask, stride, pad, dil, groups, dg):
    """DCNv2 by its definition: tap (i, j) of output (oh, ow) reads the input bilinearly at
    (oh*s - p + i*d + dy, ow*s - p + j*d + dx), zero outside, scaled by its mask; offsets hold
    (dy, dx) pairs, deformable group major, then taps row-major."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = off.shape[2:]
    k = kh * kw
    cpg = c // dg
    ys = (torch.arange(oh, dtype=x.dtype) * stride[0] - pad[0])[:, None]
    xs = (torch.arange(ow, dtype=x.dtype) * stride[1] - pad[1])[None, :]
    taps = []
    for t in range(k):
        i, j = divmod(t, kw)
        per_group = []
        for g in range(dg):
            dy, dx = off[:, 2 * (g * k + t)], off[:, 2 * (g * k + t) + 1]
            py, px = ys + i * dil[0] + dy, xs + j * dil[1] + dx
            grid = torch.stack([px * 2 / (wd - 1) - 1, py * 2 / (h - 1) - 1], -1)
            s = TF.grid_sample(x[:, g * cpg:(g + 1) * cpg], grid, mode="bilinear",
                               padding_mode="zeros", align_corners=True)
            per_group.append(s * mask[:, g * k + t][:, None])
        taps.append(torch.cat(per_group, 1))  # (N, C, OH, OW)
    cols = torch.stack(taps, 2)  # (N, C, K, OH, OW)
    cols = cols.reshape(n, groups, c // groups, k, oh, ow)
    wg = w.reshape(groups, o // groups, c // groups, k)
    return torch.einsum("ngckhw,gock->ngohw", cols, wg).reshape(n, o, oh, ow)


@op("deformable_conv2d", "conv")
def _deformable_conv2d(rng):
    groups, dg = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    c = groups * dg * int(rng.integers(1, 3)) // np.gcd(groups, dg)
    o = groups * int(rng.integers(1, 3))
    kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
    stride = tuple(int(v) for v in rng.integers(1, 3, size=2))
    dil = tuple(int(v) for v in rng.integers(1, 3, size=2))
    pad = (int(rng.integers(0, kh)), int(rng.integers(0, kw)))
    h, wd = (int(v) for v in rng.integers(2, 6, size=2))
    oh, ow = _out((h, wd), (kh, kw), pad, stride, dil)
    if min(oh, ow) <= 0:
        pad = (kh - 1, kw - 1)
        oh, ow = _out((h, wd), (kh, kw), pad, stride, dil)
    n = int(rng.integers(1, 3))
    x = values(rng, (n, c, h, wd), "float32")
    w = values(rng, (o, c // groups, kh, kw), "float32")
    off = _no_integer(values(rng, (n, 2 * dg * kh * kw, oh, ow), "float32", -1.5, 1.5))
    mask = values(rng, (n, dg * kh * kw, oh, ow), "float32", 0, 1)
    return Case(f"deformable_conv2d(x{x.shape}, w{w.shape}, offset{off.shape}, groups={groups}, "
                f"dg={dg}, s={stride}, p={pad}, d={dil})", [x, w, off, mask],
                lambda a, ww, of, m: F.deformable_conv2d(a, ww, of, m, None, stride, pad, dil,
                                                         groups),
                lambda a, ww, of, m: _deform_oracle(a, ww, of, m, stride, pad, dil, groups, dg),
                tol=(5e-4, 5e-4), bcast=False)


@op("where_broadcast", "indexing")
def _where_broadcast(rng):
    shp = tuple(int(v) for v in rng.integers(1, 4, size=int(rng.integers(1, 4))))

    def part():
        s = tuple(1 if rng.random() < 0.4 else d for d in shp)
        return s[int(rng.integers(0, len(s) + 1)):] if rng.random() < 0.3 else s
    mask = values(rng, part(), "bool")
    x, y = values(rng, part(), "float32"), values(rng, part(), "float32")
    return Case(f"where(mask{mask.shape}, x{x.shape}, y{y.shape})", [mask, x, y], F.where,
                torch.where)


# ----- RoI pooling and RoIAlign: loop oracles of the Caffe/Caffe2 kernels upstream's follow -----

def _bilinear(img, y, x):
    """megdnn's RoIAlign sample of (C, H, W) ``img``: the four neighbours of (y, x), each one
    outside the image reading 0."""
    h, w = img.shape[1:]
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    ly, lx = y - y0, x - x0

    def at(i, j):
        return img[:, i, j] if 0 <= i < h and 0 <= j < w else img[:, 0, 0] * 0
    top = at(y0, x0) + (at(y0, x0 + 1) - at(y0, x0)) * lx
    bottom = at(y0 + 1, x0) + (at(y0 + 1, x0 + 1) - at(y0 + 1, x0)) * lx
    return top + (bottom - top) * ly


def _roi_align_oracle(x, rois, pooled, mode, scale, samples, aligned):
    # upstream's kernel (megdnn roi_align): corners scaled and shifted by -0.5 when aligned,
    # sizes clipped at 0, sample_points per bin on a regular grid
    off = 0.5 if aligned else 0.0
    out = []
    for r in rois.tolist():
        img = x[int(r[0])]
        x1, y1, x2, y2 = (v * scale - off for v in r[1:])
        bh, bw = max(y2 - y1, 0.0) / pooled[0], max(x2 - x1, 0.0) / pooled[1]
        rows = []
        for i in range(pooled[0]):
            cols = []
            for j in range(pooled[1]):
                vals = [_bilinear(img, y1 + bh * (i + (a + 0.5) / samples[0]),
                                  x1 + bw * (j + (b + 0.5) / samples[1]))
                        for a in range(samples[0]) for b in range(samples[1])]
                st = torch.stack(vals)
                cols.append(st.mean(0) if mode == "average" else st.max(0)[0])
            rows.append(torch.stack(cols, -1))
        out.append(torch.stack(rows, -2))
    return torch.stack(out)


def _draw_rois(rng, n, h, w, k):
    x1 = values(rng, (k,), "float32", -1, w)
    y1 = values(rng, (k,), "float32", -1, h)
    x2 = x1 + values(rng, (k,), "float32", 0.2, w)
    y2 = y1 + values(rng, (k,), "float32", 0.2, h)
    b = rng.integers(0, n, size=k).astype(np.float32)
    return np.stack([b, x1, y1, x2, y2], 1).astype(np.float32)


@op("roi_align", "vision")
def _roi_align(rng):
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    h, w = int(rng.integers(2, 6)), int(rng.integers(2, 6))
    k = int(rng.integers(1, 4))
    pooled = tuple(int(v) for v in rng.integers(1, 4, size=2))
    samples = tuple(int(v) for v in rng.integers(1, 3, size=2))
    mode = pick(rng, ["average", "max"])
    scale = float(pick(rng, [1.0, 0.5]))
    aligned = bool(rng.random() < 0.6)
    x = values(rng, (n, c, h, w), "float32")
    rois = _draw_rois(rng, n, h / scale, w / scale, k)
    return Case(f"roi_align(x{x.shape}, rois={rois.tolist()}, {pooled}, {mode}, scale={scale}, "
                f"samples={samples}, aligned={aligned})", [x, rois],
                lambda a, r: F.vision.roi_align(a, r, pooled, mode, scale, samples, aligned),
                lambda a, r: _roi_align_oracle(a, r, pooled, mode, scale, samples, aligned),
                diff=[0], tol=(2e-4, 2e-4), layouts=False)


def _roi_pool_oracle(x, rois, pooled, mode, scale):
    h, w = x.shape[2:]

    def rnd(v):  # round half away from zero
        return int(np.sign(v) * np.floor(abs(v) + 0.5))
    out = []
    for r in rois.tolist():
        img = x[int(r[0])]
        x1, y1, x2, y2 = (rnd(v * scale) for v in r[1:])
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        rows = []
        for i in range(pooled[0]):
            hs = min(max(int(np.floor(i * rh / pooled[0])) + y1, 0), h)
            he = min(max(int(np.ceil((i + 1) * rh / pooled[0])) + y1, 0), h)
            cols = []
            for j in range(pooled[1]):
                ws = min(max(int(np.floor(j * rw / pooled[1])) + x1, 0), w)
                we = min(max(int(np.ceil((j + 1) * rw / pooled[1])) + x1, 0), w)
                if he <= hs or we <= ws:
                    cols.append(img[:, 0, 0] * 0)
                    continue
                win = img[:, hs:he, ws:we].reshape(img.shape[0], -1)
                cols.append(win.mean(1) if mode == "average" else win.max(1)[0])
            rows.append(torch.stack(cols, -1))
        out.append(torch.stack(rows, -2))
    return torch.stack(out)


@op("roi_pooling", "vision")
def _roi_pooling(rng):
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    h, w = int(rng.integers(2, 6)), int(rng.integers(2, 6))
    k = int(rng.integers(1, 4))
    pooled = tuple(int(v) for v in rng.integers(1, 4, size=2))
    mode = pick(rng, ["max", "average"])
    scale = float(pick(rng, [1.0, 0.5]))
    # distinct values: the frameworks' max may pick other tied pixels
    x = (rng.permutation(n * c * h * w).reshape(n, c, h, w) / 7.0).astype(np.float32)
    rois = _draw_rois(rng, n, h / scale, w / scale, k)
    return Case(f"roi_pooling(x{x.shape}, rois={rois.tolist()}, {pooled}, {mode}, "
                f"scale={scale})", [x, rois],
                lambda a, r: F.vision.roi_pooling(a, r, pooled, mode, scale),
                lambda a, r: _roi_pool_oracle(a, r, pooled, mode, scale),
                diff=[0], tol=(2e-4, 2e-4), layouts=False)
