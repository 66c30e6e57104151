"""Fuzz generators for quantization: fake_quant_tensor, TQT and LSQ (values and gradients)
against float oracles of upstream's formulas; the observers' statistics and qparams; and whole
QAT networks (quantize_qat, a few calibration batches, eval) against numpy fake quantization
layer by layer, then `quantize` against the QAT network; and the quantized layers no network
case builds (Elemwise, Concat, BatchMatMulActivation, the transposed convolutions, LinearBn1d)
against their QAT layers (tests/quantized_oracle.py)."""
import numpy as np
import torch

import megengine as mge
import megengine.module as M
from megengine.core.tensor import dtype as mdtype
from megengine.module import qat as QAT
from megengine.quantization import (
    ExponentialMovingAverageObserver,
    MinMaxObserver,
    QuantMode,
    create_qparams,
    ema_fakequant_qconfig,
    fake_quant_tensor,
    min_max_fakequant_qconfig,
    quantize,
    quantize_qat,
)
from megengine.quantization.utils import lsq_forward, tqt_forward
from quantized_oracle import ConcatAlong, check_against_qat, fixed_qat, quantized_input

from .gen import Case, Check, Mismatch, close, pick, registry, shape, values

OPS, op = registry("quantization")

_RANGES = {"qint8": (-128, 127), "quint8": (0, 255), "qint8_narrow": (-127, 127),
           "qint4": (-8, 7), "quint4": (0, 15), "qint32": (-2 ** 31, 2 ** 31 - 1)}


def _round_away(t):
    """C's round, upstream's kernels' rounding: halves away from zero."""
    return torch.trunc(t + torch.copysign(torch.full_like(t, 0.5), t))


def _with_halves(rng, x, step):
    """Some elements set to exact halves of ``step`` (ties of the rounding)."""
    x = x.copy()
    pick_ = rng.random(x.shape) < 0.3
    k = rng.integers(-6, 6, size=x.shape)
    x[pick_] = ((k + 0.5) * step)[pick_] if np.ndim(step) == 0 else \
        ((k + 0.5) * np.broadcast_to(step, x.shape))[pick_]
    return x.astype(np.float32)


def _draw_scale(rng, shp, per_channel):
    """A power-of-two scale (x / scale exact: the halves stay ties) or any positive one; per
    channel: shaped (1, C, 1, ...) for axis 1."""
    sshape = (1, shp[1]) + (1,) * (len(shp) - 2) if per_channel else (1,)
    if rng.random() < 0.6:
        return (2.0 ** rng.integers(-4, 2, size=sshape)).astype(np.float32)
    return values(rng, sshape, "float32", 0.05, 1.5)


# ----- fake_quant_tensor: (clip(round(x / s) + zp, qmin, qmax) - zp) * s, straight through -----

@op("fake_quant_tensor")
def _fake_quant(rng):
    name = pick(rng, list(_RANGES))
    qmin, qmax = _RANGES[name]
    mode = pick(rng, [QuantMode.SYMMERTIC, QuantMode.ASYMMERTIC])
    shp = shape(rng, 1, 4, zero=True)
    per_channel = len(shp) >= 2 and shp[1] > 0 and rng.random() < 0.4
    scale = _draw_scale(rng, shp, per_channel)
    x = _with_halves(rng, values(rng, shp, "float32", -(qmax - qmin) * 0.6, (qmax - qmin) * 0.6)
                     * float(scale.max()) / 3, scale)
    if mode == QuantMode.ASYMMERTIC:
        zp = rng.integers(max(qmin, -20), min(qmax, 20) + 1, size=scale.shape).astype(np.float32)
    else:
        zp = np.zeros((1,), np.float32)
    if rng.random() < 0.05:
        x.flat[:1] = np.nan  # NaN stays NaN (upstream's test)

    def mge_fn(a):
        qp = create_qparams(mode, name, mge.tensor(scale),
                            mge.tensor(zp) if mode == QuantMode.ASYMMERTIC else None)
        return fake_quant_tensor(a, qp)

    def torch_fn(a):
        s, z = torch.from_numpy(scale), torch.from_numpy(zp)
        v = a / s
        q = v + (_round_away(v) - v).detach() + z  # straight through the rounding
        return (torch.clamp(q, qmin, qmax) - z) * s  # (clamp passes gradient at the ends too)
    return Case(f"fake_quant_tensor(x{shp}, {name}, {mode.name}, scale{scale.ravel().tolist()}, "
                f"zp{zp.ravel().tolist()})", [x], mge_fn, torch_fn, bcast=False)


# ----- TQT: a learnt power-of-two scale (upstream's numpy reference in its tests) -----

class _TQTRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, qmin, qmax):
        t = torch.exp2(s)
        scaled = x / t
        rounded = torch.clamp(_round_away(scaled), qmin, qmax)
        ctx.save_for_backward(scaled, rounded, t)
        ctx.q = (qmin, qmax)
        return rounded * t

    @staticmethod
    def backward(ctx, g):
        scaled, rounded, t = ctx.saved_tensors
        qmin, qmax = ctx.q
        clip = (scaled < qmin - 0.5) | (scaled > qmax + 0.5)
        gx = g * (~clip)
        per = torch.where(clip, rounded, rounded - scaled) * g
        gs = per.sum().reshape(1) * t * np.log(2.0)
        return gx, gs, None, None


@op("tqt")
def _tqt(rng):
    name = pick(rng, ["qint8", "qint8_narrow", "qint4", "quint8"])
    qmin, qmax = _RANGES[name]
    shp = shape(rng, 1, 3, zero=True)
    integer = rng.random() < 0.5
    s = np.array([rng.integers(-3, 2) if integer else rng.uniform(-3, 1)], np.float32)
    t = float(2.0 ** s[0])
    x = values(rng, shp, "float32", qmin * t * 1.3 - 1, qmax * t * 1.3 + 1)
    if integer:
        x = _with_halves(rng, x, t)
    return Case(f"tqt_forward({qmin}, {qmax}, x{shp}, log2 scale {s.tolist()})", [x, s],
                lambda a, b: tqt_forward(qmin, qmax, a, b),
                lambda a, b: _TQTRef.apply(a, b, qmin, qmax), bcast=False, tol=(1e-4, 1e-4))


# ----- LSQ: upstream's numpy reference (halves rounded up: floor(v + 0.5)) -----

class _LSQRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, zp, gscale, qmin, qmax):
        v = x / s + zp
        rounded = torch.floor(torch.clamp(v, qmin, qmax) + 0.5)
        ctx.save_for_backward(v, rounded, gscale)
        ctx.q = (qmin, qmax)
        return (rounded - zp) * s

    @staticmethod
    def backward(ctx, g):
        v, rounded, gscale = ctx.saved_tensors
        qmin, qmax = ctx.q
        small, big = v < qmin, v > qmax
        mid = ~(small | big)
        per = (small * qmin + big * qmax + mid * (rounded - v)) * gscale * g
        return g * mid, per.sum().reshape(1), None, None, None, None


@op("lsq")
def _lsq(rng):
    name = pick(rng, ["qint8", "qint8_narrow", "qint4", "quint8", "quint4"])
    qmin, qmax = _RANGES[name]
    shp = shape(rng, 1, 3, zero=True)
    pow2 = rng.random() < 0.5
    s = np.array([2.0 ** rng.integers(-3, 1) if pow2 else rng.uniform(0.05, 1.0)], np.float32)
    zp = np.array([float(rng.integers(qmin, qmax + 1)) if qmax < 100 else
                   float(rng.integers(-10, 11)) if qmin < 0 else float(rng.integers(0, 30))],
                  np.float32)
    gscale = np.array([pick(rng, [1.0, 2.0, 0.25])], np.float32)
    x = values(rng, shp, "float32", (qmin - zp[0]) * s[0] * 1.3 - 0.5,
               (qmax - zp[0]) * s[0] * 1.3 + 0.5)
    if pow2:
        x = _with_halves(rng, x, float(s[0]))
    return Case(f"lsq_forward({qmin}, {qmax}, x{shp}, step {s.tolist()}, zp {zp.tolist()}, "
                f"grad_scale {gscale.tolist()})", [x, s],
                lambda a, b: lsq_forward(qmin, qmax, a, b, mge.tensor(zp), mge.tensor(gscale)),
                lambda a, b: _LSQRef.apply(a, b, torch.from_numpy(zp), torch.from_numpy(gscale),
                                           qmin, qmax), bcast=False, tol=(1e-4, 1e-4))


# ----- observers: running min/max (or their moving averages), then upstream's qparams -----

def _on_host(fn):
    """Run ``fn`` with cpu0 as the default device: quantized tensors live on CPU devices only
    (megengine/core/dtype.py), also on a CUDA machine."""
    def run():
        previous = mge.get_default_device()
        mge.set_default_device("cpu0")
        try:
            return fn()
        finally:
            mge.set_default_device(previous)
    return run


def _qparams_ref(lo, hi, mode, qmin, qmax, eps=1e-5):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if mode == QuantMode.SYMMERTIC:
        return max(max(-lo, hi) / ((qmax - qmin) / 2), eps), None
    scale = max((hi - lo) / (qmax - qmin), eps)
    return scale, qmin - float(np.round(np.float32(lo) / np.float32(scale)))


@op("observer")
def _observer(rng):
    ema = rng.random() < 0.5
    name = pick(rng, ["qint8", "quint8", "qint8_narrow", "qint4"])
    qmin, qmax = _RANGES[name]
    mode = pick(rng, [QuantMode.SYMMERTIC, QuantMode.ASYMMERTIC])
    momentum = float(pick(rng, [0.9, 0.5, 0.0]))
    shift = float(rng.uniform(-2, 2))
    batches = [values(rng, shape(rng, 1, 3, zero=False), "float32") * float(rng.uniform(0, 2))
               + shift for _ in range(int(rng.integers(1, 4)))]
    desc = (f"{'EMA' if ema else 'MinMax'}Observer({name}, {mode.name}, momentum={momentum}) on "
            f"{[b.shape for b in batches]} (shift {shift:.3f})")

    def fn():
        obs = (ExponentialMovingAverageObserver(momentum, mode, dtype=name) if ema else
               MinMaxObserver(mode, dtype=name))
        lo = hi = None
        for b in batches:
            obs(mge.tensor(b))
            if lo is None or not ema:
                lo = b.min() if lo is None else min(lo, b.min())
                hi = b.max() if hi is None else max(hi, b.max())
            else:
                lo = momentum * lo + (1 - momentum) * b.min()
                hi = momentum * hi + (1 - momentum) * b.max()
        close(obs.min_val.numpy(), np.float32(lo), (1e-5, 1e-6), desc + ": min_val")
        close(obs.max_val.numpy(), np.float32(hi), (1e-5, 1e-6), desc + ": max_val")
        qp = obs.get_qparams()
        scale, zp = _qparams_ref(float(obs.min_val.numpy()), float(obs.max_val.numpy()), mode,
                                 qmin, qmax)
        close(qp.scale.numpy(), np.float32(scale), (1e-5, 1e-8), desc + ": scale")
        if zp is not None:
            close(qp.zero_point.numpy(), np.float32(zp), (0, 0), desc + ": zero_point")
        elif qp.zero_point is not None:
            raise Mismatch(f"{desc}: a symmetric observer gave a zero point")
        return "ok"
    return Check(desc, fn)


# ----- whole networks: quantize_qat, calibration, eval; then quantize -----

def _fq(x, scale, qmin, qmax, zp=0.0):
    x = np.asarray(x, np.float32)
    s = np.float32(scale)
    v = x / s
    q = np.trunc(v + np.copysign(np.float32(0.5), v)) + np.float32(zp)
    return ((np.clip(q, qmin, qmax) - np.float32(zp)) * s).astype(np.float32)


class _Net(M.Module):
    def __init__(self, layer):
        super().__init__()
        self.quant, self.layer, self.dequant = M.QuantStub(), layer, M.DequantStub()

    def forward(self, x):
        return self.dequant(self.layer(self.quant(x)))


def _layer_ref(kind, x, w, b, geo):
    """The float layer on numpy arrays via torch (conv geometry ``geo``), relu where fused."""
    xt, wt, bt = (torch.from_numpy(np.asarray(a, np.float32)) for a in (x, w, b))
    if kind.startswith("Linear"):
        y = torch.nn.functional.linear(xt, wt, bt)
    else:
        y = torch.nn.functional.conv2d(xt, wt, bt.reshape(-1), stride=geo[0], padding=geo[1])
    if "Relu" in kind:
        y = torch.relu(y)
    return y.numpy()


@op("qat_network")
def _qat_network(rng):
    # (the layer is built on the host too: quantize() needs the whole network there)
    return _on_host(lambda: _qat_network_case(rng))()


# the layers qat_network quantizes within a network
QAT_NETWORK_KINDS = ["Linear", "LinearRelu", "Conv2d", "ConvRelu2d", "ConvBn2d", "ConvBnRelu2d"]


def _qat_network_case(rng):
    kind = pick(rng, QAT_NETWORK_KINDS)
    ema = rng.random() < 0.5
    qconfig = ema_fakequant_qconfig if ema else min_max_fakequant_qconfig
    n, cin, cout = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    geo = (int(rng.integers(1, 3)), int(rng.integers(0, 2)))
    if kind.startswith("Linear"):
        layer = (M.Linear if kind == "Linear" else M.LinearRelu)(cin, cout)
        xshape = (n, cin)
    else:
        cls = {"Conv2d": M.Conv2d, "ConvRelu2d": M.ConvRelu2d, "ConvBn2d": M.ConvBn2d,
               "ConvBnRelu2d": M.ConvBnRelu2d}[kind]
        layer = cls(cin, cout, 3, stride=geo[0], padding=geo[1])
        xshape = (n, cin, int(rng.integers(3, 6)), int(rng.integers(3, 6)))
    bn = getattr(layer, "bn", None)
    conv = getattr(layer, "conv", layer)
    conv.weight._reset(values(rng, conv.weight.shape, "float32", -1, 1))
    conv.bias._reset(values(rng, conv.bias.shape, "float32", -0.5, 0.5))
    w, b = conv.weight.numpy(), conv.bias.numpy()
    if bn is not None:
        bn.weight._reset(values(rng, bn.weight.shape, "float32", 0.5, 1.5))
        bn.bias._reset(values(rng, bn.bias.shape, "float32", -0.5, 0.5))
        gamma, beta = bn.weight.numpy().ravel(), bn.bias.numpy().ravel()
        if n * (xshape[2] + 2 * geo[1] - 3 + geo[0]) // geo[0] < 2:
            xshape = (2,) + xshape[1:]  # BatchNorm's unbiased variance needs two values
    batches = [values(rng, xshape, "float32", -2, 2) for _ in range(int(rng.integers(1, 4)))]
    test_x = values(rng, xshape, "float32", -2, 2)
    desc = f"qat_network({kind}, {'ema' if ema else 'min_max'}, x{xshape}, stride/pad {geo})"

    def fn():
        net = quantize_qat(_Net(layer), qconfig=qconfig)
        if not isinstance(net.layer, QAT.QATModule):
            raise Mismatch(f"{desc}: quantize_qat left {type(net.layer).__name__}")
        # the oracle's observers: (min, max) of the input, of the layer's output
        stats = {}

        def observe(key, a, moving):
            lo, hi = float(a.min()), float(a.max())
            if key not in stats:
                stats[key] = (lo, hi)
            elif moving:  # ExponentialMovingAverageObserver, momentum 0.9
                m = 0.9
                stats[key] = (m * stats[key][0] + (1 - m) * lo, m * stats[key][1] + (1 - m) * hi)
            else:
                stats[key] = (min(stats[key][0], lo), max(stats[key][1], hi))
            return _qparams_ref(*stats[key], QuantMode.SYMMERTIC, -128, 127)[0]

        running = [np.zeros(cout), np.ones(cout)]  # the BatchNorm's, momentum 0.9

        def reference(x, train):
            s_in = observe("in", x, ema) if train else _qparams_ref(
                *stats["in"], QuantMode.SYMMERTIC, -128, 127)[0]
            xq = _fq(x, s_in, -128, 127)
            if bn is not None:
                return bn_reference(xq, s_in, train)
            s_w = _qparams_ref(float(w.min()), float(w.max()), QuantMode.SYMMERTIC, -127, 127)[0]
            wq = _fq(w, s_w, -127, 127)
            bq = _fq(b, np.float32(s_in) * np.float32(s_w), -2 ** 31, 2 ** 31 - 1)
            y = _layer_ref(kind, xq, wq, bq, geo)
            s_out = observe("out", y, ema) if train else _qparams_ref(
                *stats["out"], QuantMode.SYMMERTIC, -128, 127)[0]
            return _fq(y, s_out, -128, 127), s_out, y

        def bn_reference(xq, s_in, train):
            """upstream's ConvBn QAT (approx): the weight folded with the running statistics
            and fake-quantized; in training the output is scaled back, biased and
            batch-normalized; in evaluation the folded qint32 bias is added instead."""
            istd = 1 / np.sqrt(running[1] + 1e-5)
            scale = (gamma * istd).astype(np.float32)
            w_fold = (w * scale[:, None, None, None]).astype(np.float32)
            if train:
                observe("w", w_fold, False)
            s_w = _qparams_ref(*stats["w"], QuantMode.SYMMERTIC, -127, 127)[0]  # qint8_narrow
            wq = _fq(w_fold, s_w, -127, 127)
            if train:
                out = _layer_ref("Conv2d", xq, wq, np.zeros(cout, np.float32), geo)
                orig = out / scale[None, :, None, None] + b[None, :, None, None].reshape(
                    1, -1, 1, 1)
                mean = orig.mean(axis=(0, 2, 3))
                var = orig.var(axis=(0, 2, 3))
                k = orig.size / cout
                running[0] = 0.9 * running[0] + 0.1 * mean
                running[1] = 0.9 * running[1] + 0.1 * var * k / (k - 1)
                y = ((orig - mean[None, :, None, None]) / np.sqrt(var + 1e-5)[None, :, None, None]
                     * gamma[None, :, None, None] + beta[None, :, None, None]).astype(np.float32)
            else:
                b_fold = (beta + gamma * (b.ravel() - running[0]) * istd).astype(np.float32)
                bq = _fq(b_fold, np.float32(s_in) * np.float32(s_w), -2 ** 31, 2 ** 31 - 1)
                y = _layer_ref("Conv2d", xq, wq, bq, geo)
            if "Relu" in kind:
                y = np.maximum(y, 0)
            s_out = observe("out", y, ema) if train else _qparams_ref(
                *stats["out"], QuantMode.SYMMERTIC, -128, 127)[0]
            return _fq(y, s_out, -128, 127), s_out, y

        def check_steps(got, want, step, y, what):
            # one step apart only where the real value sits on a rounding edge (within float
            # noise: sums in another order, or scales an ulp apart); and one always sits there:
            # a symmetric observer's extreme maps to exactly -128.5 / 127.5
            close(got, want, (0, step * 1.01), what)
            v = np.abs(np.asarray(y, np.float64) / step)
            tie = np.abs(v - np.floor(v) - 0.5) < 1e-3
            if ((np.abs(got - want) > step / 2) & ~tie).any():
                raise Mismatch(f"{what}: a step apart where the value is not on a rounding edge")

        net.train()
        for k, x in enumerate(batches):
            got = net(mge.tensor(x)).numpy()
            want, step, y = reference(x, True)
            check_steps(got, want, step, y, f"{desc}: calibration batch {k}")
        net.eval()
        qat_out = net(mge.tensor(test_x)).numpy()
        want, step, y = reference(test_x, False)
        check_steps(qat_out, want, step, y, f"{desc}: eval")
        q_net = quantize(net, inplace=False)
        q_net.eval()  # (new layers start in training mode, as upstream's)
        inner = q_net.layer(q_net.quant(mge.tensor(test_x)))
        if not mdtype.is_quantize(inner.dtype):
            raise Mismatch(f"{desc}: the quantized layer's output is {inner.dtype}, not quantized")
        close(mdtype.get_scale(inner.dtype), np.float32(step), (2e-5, 0),
              f"{desc}: quantized output scale")
        q_out = q_net(mge.tensor(test_x)).numpy()
        # the integer kernels compute the same real numbers
        check_steps(q_out, qat_out, step, y, f"{desc}: quantize() against the QAT network")
        return "ok"
    return Check(desc, _on_host(fn))


# ----- F.quantized: integer convolutions against an int64 numpy oracle -----

def _check_accumulator(y, acc, acc_scale, desc):
    """A qint32 output: the accumulator's scale (input scale times weight scale) and its exact
    integers."""
    if not mdtype.is_quantize(y.dtype) or \
            abs(mdtype.get_scale(y.dtype) - acc_scale) > 1e-6 * acc_scale:
        raise Mismatch(f"{desc}: output dtype {y.dtype}, expected qint32({acc_scale})")
    close(y.numpy().astype(np.int64), acc, None, desc + ": qint32 accumulator")


def _check_ints(y, want, tol, desc):
    """A quantized output's integers against the oracle's, within ``tol`` steps."""
    got = y.numpy().astype(np.int64)
    if got.shape != want.shape or np.abs(got - want).max(initial=0) > tol:
        raise Mismatch(f"{desc}: integers differ\n ours={got.ravel()[:10]}\n "
                       f"oracle={want.ravel()[:10].astype(np.int64)}")


def _int_conv(x, w, stride, pad, dil, groups, transposed=False, out_pad=(0, 0)):
    """Exact integer (int64) 2-d convolution by windows (cross-correlation); transposed: the
    scatter of each input pixel's weighted kernel (the adjoint), cropped by the padding."""
    n, c, h, wd = x.shape
    if transposed:
        cin, opg, kh, kw = w.shape
        cpg = cin // groups
        oh = (h - 1) * stride[0] - 2 * pad[0] + dil[0] * (kh - 1) + 1 + out_pad[0]
        ow = (wd - 1) * stride[1] - 2 * pad[1] + dil[1] * (kw - 1) + 1 + out_pad[1]
        full = np.zeros((n, opg * groups, oh + 2 * pad[0] + stride[0],
                         ow + 2 * pad[1] + stride[1]), np.int64)
        for g in range(groups):
            xs = x[:, g * cpg:(g + 1) * cpg]
            wg = w[g * cpg:(g + 1) * cpg]  # (cpg, opg, kh, kw)
            for i in range(kh):
                for j in range(kw):
                    contrib = np.einsum("nchw,co->nohw", xs, wg[:, :, i, j])
                    y0, x0 = i * dil[0], j * dil[1]
                    full[:, g * opg:(g + 1) * opg, y0:y0 + (h - 1) * stride[0] + 1:stride[0],
                         x0:x0 + (wd - 1) * stride[1] + 1:stride[1]] += contrib
        return full[:, :, pad[0]:pad[0] + oh, pad[1]:pad[1] + ow]
    o, cpg, kh, kw = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (xp_.shape[2] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (xp_.shape[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    opg = o // groups
    out = np.zeros((n, o, oh, ow), np.int64)
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                win = xp_[:, g * cpg:(g + 1) * cpg,
                          i * dil[0]:i * dil[0] + (oh - 1) * stride[0] + 1:stride[0],
                          j * dil[1]:j * dil[1] + (ow - 1) * stride[1] + 1:stride[1]]
                out[:, g * opg:(g + 1) * opg] += np.einsum(
                    "nchw,oc->nohw", win, w[g * opg:(g + 1) * opg, :, i, j])
    return out


def _quantize_ref(v, scale, zp, qmin, qmax):
    # upstream 1.13 measured: float32 v times float32 1 / scale, halves away from zero
    v = np.asarray(v, np.float32)
    q = v * (np.float32(1) / np.float32(scale))
    q = np.trunc(q + np.copysign(np.float32(0.5), q)) + zp
    return np.clip(q, qmin, qmax)


def _value_ref(acc, bias, acc_scale):
    """Upstream 1.13's ConvBias (measured): the accumulator's value and the bias's, each in
    float32, summed in float32."""
    v = acc.astype(np.float32) * np.float32(acc_scale)
    return v if bias is None else v + bias.astype(np.float32) * np.float32(acc_scale)


@op("quantized_conv")
def _quantized_conv(rng):
    import megengine.functional as F

    transposed = rng.random() < 0.3
    groups = int(rng.integers(1, 3))
    cpg, opg = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    n = int(rng.integers(1, 3))
    kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
    stride = tuple(int(v) for v in rng.integers(1, 3, size=2))
    dil = tuple(int(v) for v in rng.integers(1, 3, size=2))
    pad = (int(rng.integers(0, kh)), int(rng.integers(0, kw)))
    out_pad = tuple(int(rng.integers(0, s)) for s in stride) if transposed else (0, 0)
    h = max(int(rng.integers(1, 6)), dil[0] * (kh - 1) + 1 - 2 * pad[0])
    w_ = max(int(rng.integers(1, 6)), dil[1] * (kw - 1) + 1 - 2 * pad[1])
    in_name = pick(rng, ["qint8", "quint8"])
    s_in, s_w = float(rng.uniform(0.01, 0.2)), float(rng.uniform(0.005, 0.1))
    zp_in = int(rng.integers(100, 156)) if in_name == "quint8" else 0
    qmin_in, qmax_in = _RANGES[in_name]
    xi = rng.integers(qmin_in, qmax_in + 1, size=(n, groups * cpg, h, w_))
    wshape = (groups * cpg, opg, kh, kw) if transposed else (groups * opg, cpg, kh, kw)
    wi = rng.integers(-127, 128, size=wshape)
    has_bias = rng.random() < 0.7
    bi = rng.integers(-5000, 5000, size=(1, groups * opg, 1, 1))
    out_kind = pick(rng, ["qint8", "quint8", "qint32", "float32"])
    mode = "identity" if transposed else pick(rng, ["identity", "relu", "sigmoid", "h_swish"])
    s_out = float(rng.uniform(0.05, 2.0))
    zp_out = int(rng.integers(0, 256)) if out_kind == "quint8" else 0
    desc = (f"quantized {'conv_transpose2d' if transposed else 'conv_bias_activation'}("
            f"x{xi.shape} {in_name}, w{wshape}, bias={has_bias}, out {out_kind}, {mode}, "
            f"s={stride}, p={pad}, d={dil}, op={out_pad}, groups={groups})")

    def fn():
        in_dt = (mdtype.quint8(s_in, zp_in) if in_name == "quint8" else mdtype.qint8(s_in))
        x = mge.tensor(xi.astype(np.uint8 if in_name == "quint8" else np.int8), dtype=in_dt)
        wt = mge.tensor(wi.astype(np.int8), dtype=mdtype.qint8(s_w))
        acc_scale = float(np.float32(s_in) * np.float32(s_w))
        bt = mge.tensor(bi.astype(np.int32), dtype=mdtype.qint32(acc_scale)) if has_bias \
            else None
        out_dt = {"qint8": mdtype.qint8(s_out), "quint8": mdtype.quint8(s_out, zp_out),
                  "qint32": None, "float32": np.float32}[out_kind]
        if out_kind == "qint32" and mode in ("sigmoid", "h_swish"):
            # a nonlinear activation cannot stay in the integer accumulator: refused
            try:
                F.quantized.conv_bias_activation(x, wt, bt, None, stride, pad, dil, groups,
                                                 nonlinear_mode=mode)
            except ValueError as e:
                if "needs an output dtype" in str(e):
                    return "error"
                raise
            raise Mismatch(f"{desc}: accepted {mode} into the qint32 accumulator")
        if transposed:
            empty = any((i - 1) * st - 2 * p + d * (k - 1) + 1 + op_ <= 0 for i, st, p, d, k, op_
                        in zip((h, w_), stride, pad, dil, (kh, kw), out_pad))
            try:
                y = F.quantized.conv_transpose2d(x, wt, bt, out_dt, stride, pad, out_pad, dil,
                                                 groups)
            except ValueError as e:
                if empty and "leaves no output" in str(e):
                    return "error"
                raise
            if empty:
                raise Mismatch(f"{desc}: an empty output accepted")
        else:
            y = F.quantized.conv_bias_activation(x, wt, bt, out_dt, stride, pad, dil, groups,
                                                 nonlinear_mode=mode)
        acc = _int_conv(xi - zp_in, wi, stride, pad, dil, groups, transposed, out_pad)
        if out_kind == "qint32":
            acc = acc + bi if has_bias else acc
            if mode == "relu":
                acc = np.maximum(acc, 0)
            _check_accumulator(y, acc, acc_scale, desc)
            return "ok"
        v = _value_ref(acc, bi if has_bias else None, acc_scale)
        if mode == "relu":
            v = np.maximum(v, 0)
        elif mode == "sigmoid":
            v = (1 / (1 + np.exp(-v))).astype(np.float32)
        elif mode == "h_swish":
            v = (v * np.clip(v + 3, 0, 6) / 6).astype(np.float32)
        if out_kind == "float32":
            close(y.numpy(), v, (1e-5, 1e-5), desc + ": float output")
            return "ok"
        qmin, qmax = _RANGES[out_kind]
        want = _quantize_ref(v, s_out, zp_out, qmin, qmax)
        # the activation's float rounding may move a value on a rounding edge by one
        _check_ints(y, want, 0 if mode in ("identity", "relu") else 1, desc)
        return "ok"
    return Check(desc, _on_host(fn))



@op("batch_conv_bias_activation")
def _batch_conv_bias_activation(rng):
    import megengine.functional as F

    # one weight per sample (upstream's BatchConvBias): sample n's exact integer convolution
    # with weight[n], then the bias, the activation and the output dtype as conv_bias_activation
    n, cin, cout = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
    kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
    stride = tuple(int(v) for v in rng.integers(1, 3, size=2))
    dil = tuple(int(v) for v in rng.integers(1, 3, size=2))
    pad = (int(rng.integers(0, kh)), int(rng.integers(0, kw)))
    h = max(int(rng.integers(1, 6)), dil[0] * (kh - 1) + 1 - 2 * pad[0])
    w_ = max(int(rng.integers(1, 6)), dil[1] * (kw - 1) + 1 - 2 * pad[1])
    s_in, s_w = float(rng.uniform(0.01, 0.2)), float(rng.uniform(0.005, 0.1))
    xi = rng.integers(-128, 128, size=(n, cin, h, w_))
    wi = rng.integers(-127, 128, size=(n, cout, cin, kh, kw))
    has_bias = rng.random() < 0.7
    bi = rng.integers(-5000, 5000, size=(1, cout, 1, 1))
    out_kind = pick(rng, ["qint8", "qint32", "float32"])
    mode = pick(rng, ["identity", "relu"])
    s_out = float(rng.uniform(0.05, 2.0))
    desc = (f"batch_conv_bias_activation(x{xi.shape} qint8, w{wi.shape}, bias={has_bias}, "
            f"out {out_kind}, {mode}, s={stride}, p={pad}, d={dil})")

    def fn():
        x = mge.tensor(xi.astype(np.int8), dtype=mdtype.qint8(s_in))
        wt = mge.tensor(wi.astype(np.int8), dtype=mdtype.qint8(s_w))
        acc_scale = float(np.float32(s_in) * np.float32(s_w))
        bt = mge.tensor(bi.astype(np.int32), dtype=mdtype.qint32(acc_scale)) if has_bias \
            else None
        out_dt = {"qint8": mdtype.qint8(s_out), "qint32": None, "float32": np.float32}[out_kind]
        y = F.quantized.batch_conv_bias_activation(x, wt, bt, out_dt, stride, pad, dil,
                                                   nonlinear_mode=mode)
        acc = np.concatenate([_int_conv(xi[i:i + 1], wi[i], stride, pad, dil, 1)
                              for i in range(n)])
        if out_kind == "qint32":
            acc = acc + bi if has_bias else acc
            _check_accumulator(y, np.maximum(acc, 0) if mode == "relu" else acc, acc_scale,
                               desc)
            return "ok"
        v = _value_ref(acc, bi if has_bias else None, acc_scale)
        if mode == "relu":
            v = np.maximum(v, 0)
        if out_kind == "float32":
            close(y.numpy(), v, (1e-5, 1e-5), desc + ": float output")
            return "ok"
        want = _quantize_ref(v, s_out, 0, -128, 127)
        _check_ints(y, want, 0, desc)
        return "ok"
    return Check(desc, _on_host(fn))


# ----- megengine.module.quantized layers against their QAT layers (tests/quantized_oracle) -----

# Elemwise methods by input count (the float modes' quantized forms; TRUE_DIV left out: a zero
# divisor gives infinities that are no case of the quantized grid)
_ELEMWISE_METHODS = {1: ["RELU", "ABS", "NEGATE", "H_SWISH", "SIGMOID", "TANH"],
                     2: ["ADD", "SUB", "MUL", "MIN", "MAX", "FUSE_ADD_RELU",
                         "FUSE_ADD_H_SWISH"],
                     3: ["FUSE_MUL_ADD3"]}


def _qat_layer(rng, kind):
    """(the QAT layer ``kind`` with random sizes and parameters, its input shapes)."""
    if kind == "Elemwise":
        arity = int(pick(rng, [1, 2, 3]))
        shp = shape(rng, 1, 4, zero=False)
        return QAT.Elemwise(pick(rng, _ELEMWISE_METHODS[arity])), [shp] * arity
    if kind == "Concat":
        shp = list(shape(rng, 1, 3, zero=False))
        axis = int(rng.integers(0, len(shp)))
        shapes = []
        for _ in range(int(rng.integers(1, 4))):
            shp[axis] = int(rng.integers(1, 4))
            shapes.append(tuple(shp))
        return ConcatAlong(QAT.Concat(), axis), shapes
    if kind == "BatchMatMulActivation":
        b, i, o, n = (int(v) for v in rng.integers(1, 5, size=4))
        return (QAT.BatchMatMulActivation(b, i, o, bias=bool(rng.random() < 0.7),
                                          nonlinear_mode=pick(rng, ["identity", "relu"])),
                [(b, i, n)])
    if kind.startswith("Linear"):
        n, i, o = (int(v) for v in rng.integers(1, 5, size=3))
        return getattr(QAT, kind)(i, o, bias=bool(rng.random() < 0.7)), [(n, i)]
    groups = int(rng.integers(1, 3))
    cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    k, stride, dil = (int(v) for v in rng.integers(1, 4, size=3))
    stride, dil = min(stride, 2), min(dil, 2)
    pad = int(rng.integers(0, (dil * (k - 1)) // 2 + 1))
    layer = getattr(QAT, kind)(cin, cout, k, stride=stride, padding=pad,
                               output_padding=int(rng.integers(0, stride)), dilation=dil,
                               groups=groups, bias=bool(rng.random() < 0.7))
    return layer, [(int(rng.integers(1, 3)), cin, int(rng.integers(1, 5)),
                    int(rng.integers(1, 5)))]


# the quantized layers quantized_module builds alone (the others: QAT_NETWORK_KINDS)
QUANTIZED_MODULE_KINDS = ["Elemwise", "Concat", "BatchMatMulActivation", "ConvTranspose2d",
                          "ConvTransposeRelu2d", "ConvTransposeBn2d", "ConvTransposeBnRelu2d",
                          "LinearBn1d", "LinearBnRelu1d"]


@op("quantized_module")
def _quantized_module(rng):
    from megengine.module import quantized as Q

    kind = pick(rng, QUANTIZED_MODULE_KINDS)
    # the observers' fixed ranges and the inputs' scales
    w_range = (-float(rng.uniform(0.2, 2)), float(rng.uniform(0.2, 2)))
    act_range = (-float(rng.uniform(0.5, 6)), float(rng.uniform(0.5, 6)))
    in_scales = [float(np.float32(rng.uniform(0.005, 0.1))) for _ in range(3)]
    seeds = [int(s) for s in rng.integers(0, 2 ** 31, size=3)]
    state = rng.integers(0, 2 ** 31)

    def fn():
        layer, shapes = _qat_layer(np.random.default_rng(state), kind)
        inner = getattr(layer, "layer", layer)
        prng = np.random.default_rng(state + 1)
        for name, p in inner.named_parameters():
            lo, hi = (0.5, 1.5) if name == "bn.weight" else (-1, 1)
            p._reset(values(prng, p.shape, "float32", lo, hi))
        bn = getattr(inner, "bn", None)
        if bn is not None:
            bn.running_mean._reset(values(prng, bn.running_mean.shape, "float32", -0.5, 0.5))
            bn.running_var._reset(values(prng, bn.running_var.shape, "float32", 0.3, 2))
        weight, weight_range = getattr(inner, "weight", None), w_range
        if bn is not None:  # (the weight the layers quantize: BatchNorm folded in)
            weight = inner._folded(bn.running_mean, bn.running_var)[1]
        if weight is not None:
            # the observer's range covers the weight, as after calibration: a weight below
            # it is -128 in a quantized layer without BatchNorm (qint8) but -127 in the QAT
            # layer's fake quantization (qint8_narrow), in upstream 1.13 too (the BatchNorm
            # layers cast the fake-quantized folded weight: -127 both; docs/api/quantization)
            w = weight.numpy()
            weight_range = (min(w_range[0], float(w.min())), max(w_range[1], float(w.max())))
        fixed_qat(inner, weight_range, act_range)
        desc = (f"quantized.{kind}.from_qat_module({inner}) on x{shapes}, input scales "
                f"{in_scales[:len(shapes)]}, weight range {weight_range}, activation range "
                f"{act_range}")
        q = getattr(Q, kind).from_qat_module(inner)
        q.eval()
        q_layer = ConcatAlong(q, layer.axis) if kind == "Concat" else q
        inputs = [quantized_input(s, seed, scale) for s, seed, scale
                  in zip(shapes, seeds, in_scales)]
        try:
            check_against_qat(layer, q_layer, *inputs)
        except AssertionError as e:
            raise Mismatch(f"{desc}: {e}") from None
        return "ok"
    return Check(f"quantized_module({kind})", _on_host(fn))
