"""The fuzzer's quantized mode (``python -m tests.fuzz --quantized``): a drawn case whose inputs
include float32 tensors is run again with those inputs quantized (qint8, quint8 with a zero
point, qint32; random scales ``m * 2**-k``, so every value on the grid is exact in float32), and
megengine's outcome is checked against torch's on the values (docs/api/quantization.rst: an op
on a quantized tensor computes what the values give, or refuses; the runner is
`converted_inputs.run_converted`):

- a quantized result: its values are torch's within half a step of its scale (so exact where
  torch's result is on the grid: order and data-movement ops), or saturated at the dtype's range;
- a float result: torch's, within the case's tolerance; an integer or bool result: torch's;
- a TypeError of megengine's that says the input is quantized (or names its dtype): a
  refusal, accepted;
- anything else (a wrong value, an integer result without the scale, another error, a numpy
  warning about a cast) is a Mismatch. Gradients are not compared (quantized tensors are for
  inference)."""
import numpy as np

from megengine.core.tensor import dtype as qd

from .converted_inputs import Mode, run_converted, snap
from .gen import Mismatch, _close, pick

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


def values_of(q, dt):
    """The float64 values of stored integers ``q`` of quantized dtype ``dt`` (exact)."""
    info = dt.metadata["mgb_dtype"]
    return (q.astype(np.float64) - info.get("zero_point", 0)) * info["scale"]


class _Quantized(Mode):
    name = "quantized"

    def dtypes(self, rng, xs):
        amax = max([float(np.abs(x).max()) for x in xs if x.size] + [1e-3])
        return [_draw_dtype(rng, amax, pick(rng, sorted(_KINDS))) for _ in xs]

    def convert(self, x, dt):
        meta, info = qd.quant_meta(dt), dt.metadata["mgb_dtype"]
        return snap(x, info["scale"], info.get("zero_point", 0), meta.qmin,
                    meta.qmax).astype(dt.str)

    def values(self, q, dt):
        return values_of(q, dt)

    def dtype_name(self, dt):
        return qd.dtype_name(dt)

    def refusal(self, msg):
        return any(w in msg for w in ("quantized", "qint", "quint"))

    def check(self, y, want_value, want_dtype, tol, what, kept=(), native=None):
        if not (want_dtype.kind == "f" if qd.is_quantize(y.dtype)
                else np.dtype(y.dtype) == want_dtype):
            raise Mismatch(f"{what} dtype {qd.dtype_name(y.dtype)}, expected {want_dtype} (or "
                           "a quantized dtype for a float result)")
        if qd.is_quantize(y.dtype):
            _close_quantized(y.numpy(), y.dtype, want_value, tol, what)
        else:
            _close(y.numpy(), want_value, tol, what)


QUANTIZED = _Quantized()


def run_quantized(case, rng):
    """Run ``case`` with its float32 inputs quantized (`run_converted`)."""
    return run_converted(case, rng, QUANTIZED)


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
