"""The fuzzer's quantized mode (``python -m tests.fuzz --quantized``): a drawn case whose inputs
include float32 tensors is run again with those inputs quantized (qint8, quint8 with a zero
point, qint32; random scales ``m * 2**-k``, so every value on the grid is exact in float32), and
megengine's outcome is checked against torch's on the values (docs/api/quantization.rst: an op
on a quantized tensor computes what the values give, or refuses):

- a quantized result: its values are torch's within half a step of its scale (so exact where
  torch's result is on the grid: order and data-movement ops), or saturated at the dtype's range;
- a float result: torch's, within the case's tolerance; an integer or bool result: torch's;
- a TypeError of megengine's that says the input is quantized (or names its dtype): a
  refusal, accepted;
- anything else (a wrong value, an integer result without the scale, another error, a numpy
  warning about a cast) is a Mismatch. Gradients are not compared (quantized tensors are for
  inference)."""
import warnings

import numpy as np
import torch

import megengine as mge
from megengine.core.tensor import dtype as qd

from .gen import (Check, Layout, Mismatch, _close, _is_ours, flat, layout, outputs, pick,
                  torch_outputs)

# kind -> (dtype maker, levels the drawn values span on each side of zero)
_KINDS = {
    "qint8": (lambda s, zp: qd.qint8(s), 127),
    "quint8": (qd.quint8, None),  # (its levels: the zero point's distance to 0 and 255)
    "qint32": (lambda s, zp: qd.qint32(s), 2 ** 16),
}


def _draw_dtype(rng, amax, kind):
    """A quantized dtype of ``kind`` whose grid covers [-amax, amax] without saturating."""
    zp = int(rng.integers(32, 224)) if kind == "quint8" else None
    levels = min(zp, 255 - zp) if kind == "quint8" else _KINDS[kind][1]
    m = pick(rng, (1, 3, 5, 7))
    k = int(np.ceil(np.log2(amax / levels / m))) + int(rng.integers(0, 3))
    return _KINDS[kind][0](m * 2.0 ** k, zp)


def _snap(x, dt):
    """``x`` on ``dt``'s grid: the stored integers (a plain integer array). The values stay in
    ``x``'s range where a grid point is, and keep their signs (a step away from 0 rather than
    0), so that the case's domain holds (log's x > 0, a probability's [0, 1])."""
    meta, info = qd.quant_meta(dt), dt.metadata["mgb_dtype"]
    x = x.astype(np.float64) / info["scale"]
    r = np.round(x)
    if x.size and np.ceil(x.min()) <= np.floor(x.max()):
        r = r.clip(np.ceil(x.min()), np.floor(x.max()))
    q = np.where((r == 0) & (x != 0), np.sign(x), r) + info.get("zero_point", 0)
    return q.clip(meta.qmin, meta.qmax).astype(dt.str)


def values_of(q, dt):
    """The float64 values of stored integers ``q`` of quantized dtype ``dt`` (exact)."""
    info = dt.metadata["mgb_dtype"]
    return (q.astype(np.float64) - info.get("zero_point", 0)) * info["scale"]


def _quantize_inputs(rng, case):
    """{input index: (quantized dtype, stored integers)} for the case's float32 inputs; None
    when it has none (or NaN or infinity) or the grid would tie values a tie-sensitive case
    keeps distinct."""
    idx = [i for i, a in enumerate(case.inputs) if a.dtype == np.float32]
    if not idx or not all(np.isfinite(case.inputs[i]).all() for i in idx):
        return None  # (NaN and infinity have no quantized form)
    amax = max([float(np.abs(case.inputs[i]).max()) for i in idx if case.inputs[i].size] +
               [1e-3])
    shared = rng.random() < 0.5  # one dtype for all: the same-dtype paths (q + q, concat)
    dts = [_draw_dtype(rng, amax, pick(rng, sorted(_KINDS)))
           for _ in range(1 if shared else len(idx))]
    dts = dts * len(idx) if shared else dts
    out = {}
    for i, dt in zip(idx, dts):
        x, q = case.inputs[i], _snap(case.inputs[i], dt)
        if not case.bcast and np.unique(values_of(q, dt)).size < np.unique(x).size:
            return None  # (ties that the two frameworks may break differently)
        out[i] = (dt, q)
    return out


def run_quantized(case, rng):
    """Run ``case`` with its float32 inputs quantized; "skip" when it has none (or is a
    `Check`), "refused" for a clear refusal, else like `gen.run`."""
    if isinstance(case, Check):
        return "skip"
    quant = _quantize_inputs(rng, case)
    if quant is None:
        return "skip"
    arrs = [quant[i][1] if i in quant else a for i, a in enumerate(case.inputs)]
    lays = [layout(rng, a, bcast=case.bcast) if case.use_layouts
            else Layout(a, lambda t: t, "contig") for a in arrs]
    names = [qd.dtype_name(quant[i][0]) if i in quant else str(a.dtype)
             for i, a in enumerate(arrs)]
    desc = f"{case.desc} quantized=[{', '.join(names)}] layouts=" + \
        ",".join(lay.name for lay in lays)

    ts = [torch.tensor(values_of(lay.stored, quant[i][0]).astype(np.float32) if i in quant
                       else lay.stored) for i, lay in enumerate(lays)]
    tout, terr = torch_outputs(case, lays, ts)
    xs = [mge.tensor(lay.stored, dtype=quant[i][0] if i in quant else lay.stored.dtype)
          for i, lay in enumerate(lays)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ys = flat(case.mge_fn(*[lay.view(x) for lay, x in zip(lays, xs)]))
        except Exception as e:  # noqa: BLE001
            if isinstance(e, TypeError) and _is_ours(e) and \
                    any(w in str(e) for w in ("quantized", "qint", "quint")):
                return "refused"
            if (case.refuse or terr is not None) and _is_ours(e):
                return "error"
            raise Mismatch(f"{desc}: megengine raised {type(e).__name__}: {e}"
                           + ("" if terr is None else f" (torch: {type(terr).__name__})")) from e
    casts = [str(w.message) for w in caught if "cast" in str(w.message)]
    if casts:
        raise Mismatch(f"{desc}: numpy warned: {casts[0]}")
    for k, (y, tv, want) in enumerate(outputs(case, desc, ys, tout, terr)):
        what = f"{desc}: output {k}"
        if tuple(y.shape) != tuple(tv.shape):
            raise Mismatch(f"{what} shape {tuple(y.shape)}, torch {tv.shape}")
        if not (want.kind == "f" if qd.is_quantize(y.dtype) else np.dtype(y.dtype) == want):
            raise Mismatch(f"{what} dtype {qd.dtype_name(y.dtype)}, expected {want} (or a "
                           "quantized dtype for a float result)")
        try:
            _close_values(y, tv, case.tol, what)
        except Mismatch as e:
            raise Mismatch(f"{e}\n ({_float_path(case, lays, ts, k, y)})") from None
    return "ok"


def _float_path(case, lays, ts, k, y):
    """What megengine's float path gives on the same values (the triage a value mismatch
    needs: a quantized path's fault, or the float path's at an edge the float cases miss)."""
    try:
        ours = flat(case.mge_fn(*[lay.view(mge.tensor(t.numpy())) for lay, t in
                                  zip(lays, ts)]))[k]
    except Exception as e:  # noqa: BLE001
        return f"megengine's float path on these values raises {type(e).__name__}"
    same = _close_values(y, ours.numpy(), case.tol, "", check=False)
    return f"megengine's float path on these values {'gives the same' if same else 'agrees with torch'}"


def _close_values(y, want, tol, what, check=True):
    """Raise Mismatch (or with ``check`` False, return False) unless result ``y`` (a Tensor,
    quantized or not) has the values ``want``."""
    try:
        if qd.is_quantize(y.dtype):
            _close_quantized(y.numpy(), y.dtype, want, tol, what)
        else:
            _close(y.numpy(), want, tol, what)
    except Mismatch:
        if check:
            raise
        return False
    return True


def _close_quantized(q, dt, want, tol, what):
    """Quantized result ``q`` (stored integers of ``dt``) against float result ``want``: within
    half a step (and the float tolerance), or saturated at the range toward ``want``."""
    got, want = values_of(q, dt), want.astype(np.float64)
    step = dt.metadata["mgb_dtype"]["scale"]
    rtol, atol = tol or (1e-4, 1e-5)
    ok = np.abs(got - want) <= step / 2 * (1 + 1e-6) + atol + rtol * np.abs(want)
    meta = qd.quant_meta(dt)
    ok |= ((q == meta.qmax) & (want >= got)) | ((q == meta.qmin) & (want <= got))
    if not ok.all():
        i = tuple(np.argwhere(~ok)[0])
        raise Mismatch(f"{what} ({qd.dtype_name(dt)}): value {got[i]} (stored {q[i]}) vs torch "
                       f"{want[i]}, more than half a step ({step / 2:g}) apart")
