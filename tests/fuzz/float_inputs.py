"""The fuzzer's float modes (``python -m tests.fuzz --float64`` and ``--float16``): a drawn case
whose inputs include float32 tensors is run again with those inputs as float64 or float16
tensors (the drawn values rounded to the dtype; `converted_inputs.run_converted` is the runner),
to find silent precision and dtype loss inside the ops:

- ``--float64``: a float result is float64 where torch's float64 op's is (no float32 constant,
  ATen cast or float32 kernel on the way), and within the case's float32 tolerance times 1e-6
  of torch's float64 result (1e-10 for the default rtol 1e-4: float32 arithmetic anywhere on the
  way is off by about 1e-7; where the case's oracle computes in float32 itself, within the
  case's tolerance);
- ``--float16``: a float result is float16 where torch's float16 op's is (where torch on the CPU
  has no float16 kernel, where the exact result is a float), and its error against the exact
  result (torch in float64 on the same float16 values) is at most twice torch's float16 error or
  4 float16 ulps of the output's largest value (tests/oracle.py `check_float16_against_torch`'s
  rule, with room for the ulps that the cases' chains of float16 roundings add); a result
  beyond float16's range is infinite, or what torch's float16 op gives;
- a float result may also have the promotion of the mode's dtype with the inputs left as they
  were (complex64 and float64 give complex128, as numpy's);
- an integer or bool result (an index, a comparison) is exactly torch's, in its dtype or the
  case's;
- a TypeError or ValueError of megengine's that names the dtype and says the op takes float32
  is a refusal, accepted; anything else (another error, a numpy warning about a cast other
  than a float overflow, whose infinity the value rules judge) is a Mismatch. Gradients are
  not compared."""
import numpy as np

from .converted_inputs import Mode, run_converted
from .gen import Mismatch, _close

_F16_ULP = 2.0 ** -10  # (float16's ulp at 1, relative)


class _Float(Mode):
    errors = (TypeError, ValueError)  # (a refusal that says the op takes float32 only)
    triage = False  # (the float32 path is not the reference)
    non_finite = True  # (sorting NaN, exp of inf: the float dtypes' own paths)
    oracle_dtype = np.float64

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.name = self.dtype.name
        self.native = self.dtype == np.float16  # (torch's float16 error: the allowance)

    def dtypes(self, rng, xs):
        # (finite values only: NaN and infinity convert as they are, and a NaN maximum would
        # let the values beyond float16's range through)
        if any(np.abs(x[np.isfinite(x)]).max(initial=0) > np.finfo(self.dtype).max for x in xs):
            return None  # (beyond float16's range)
        return [self.dtype] * len(xs)

    def convert(self, x, dt):
        return x.astype(dt)

    def values(self, q, dt):
        return q.astype(np.float64)

    def refusal(self, msg):
        return "float32" in msg and self.name in msg

    def check(self, y, want_value, want_dtype, tol, what, kept=(), native=None):
        got, dt = y.numpy(), np.dtype(y.dtype)
        if want_value.dtype.kind not in "fc" or want_dtype.kind not in "fc":
            if dt != want_dtype:  # (an index, a comparison: torch's dtype or the case's)
                raise Mismatch(f"{what} dtype {dt}, expected {want_dtype}")
            if self.dtype == np.float16 and native is not None and native.shape == got.shape \
                    and np.array_equal(got, native):
                return  # (torch's float16 op agrees: a tie or a rounding in float16)
            return _close(got, want_value, tol, what)
        # a float result: torch's dtype for the mode's inputs, or the mode's dtype promoted
        # with the other inputs' (complex64 and float64 give complex128, as numpy's; float16
        # parts give complex64: there is no complex32)
        ref = want_value if self.dtype == np.float64 else native
        want = {np.result_type(self.dtype, *[k for k in kept if k.kind in "fc"])}
        if ref is not None:
            want.add(np.dtype(ref.dtype))
        if self.dtype == np.float16 and any(k.kind in "biu" for k in kept):
            want.add(np.dtype(np.float32))  # (upstream's float16 meeting an integer tensor)
        if want_value.dtype.kind == "c":  # (float16 and a complex scalar: torch's complex32
            want.add(np.result_type(self.dtype, np.complex64))  # where it has a kernel)
        if dt not in want:
            raise Mismatch(f"{what} dtype {dt}, expected {' or '.join(sorted(map(str, want)))}"
                           f" (torch's for {self.name} inputs, or the promotion)")
        if self.dtype == np.float16:
            return _close_float16(got, want_value, native, what)
        rtol, atol = tol or (1e-4, 1e-5)
        if want_value.dtype in (np.float64, np.complex128):  # (else the oracle computes in
            rtol, atol = rtol * 1e-6, atol * 1e-6  # single precision: its tolerance)
        _close(got, want_value, (rtol, atol), what)


FLOAT64, FLOAT16 = _Float(np.float64), _Float(np.float16)


def run_float64(case, rng):
    """Run ``case`` with its float32 inputs as float64 (`run_converted`)."""
    return run_converted(case, rng, FLOAT64)


def run_float16(case, rng):
    """Run ``case`` with its float32 inputs as float16 (`run_converted`), its constants
    (`gen.like`) as float16 values too, also for the exact result."""
    from . import gen

    gen.CONSTANTS_ROUNDED_TO = np.float16
    try:
        return run_converted(case, rng, FLOAT16)
    finally:
        gen.CONSTANTS_ROUNDED_TO = None


def _close_float16(got, exact, native, what):
    """float16 result ``got`` against the ``exact`` one (float64): its error at most twice that
    of torch's float16 result ``native`` (None where torch has no float16 kernel) or 4 ulps
    of the largest value; where ``exact`` is beyond float16's range, infinite or ``native``."""
    if got.size == 0:
        return
    g = got.astype(np.float64) if got.dtype.kind == "f" else got.astype(np.complex128)
    if np.iscomplexobj(g) or np.iscomplexobj(exact):
        g, exact = (np.stack([x.real, x.imag], -1) for x in (g, exact))
        native = None if native is None else np.stack([native.real, native.imag], -1)
    big = np.abs(exact) > np.finfo(np.float16).max
    nat = None if native is None or native.shape != got.shape else native.astype(np.float64)
    same_nan = np.isnan(g) == np.isnan(exact)
    if nat is not None:  # (a NaN where torch's float16 op has one: an overflow on the way)
        same_nan |= np.isnan(g) & np.isnan(nat)
    if not same_nan.all():
        i = tuple(np.argwhere(~same_nan)[0])
        raise Mismatch(f"{what}: NaN where the exact result has none (or the reverse) at {i}: "
                       f"{g[i]} vs exact {exact[i]}")
    fin = np.isfinite(exact) & ~big
    scale = max(np.abs(exact[fin]).max(initial=0), np.finfo(np.float16).tiny)
    with np.errstate(invalid="ignore"):  # (inf - inf where the exact value is infinite: masked)
        err = np.where(fin, np.abs(g - exact), 0) / scale
        nerr = None if nat is None else np.where(fin, np.abs(nat - exact), 0) / scale
    err = np.where(np.isnan(err), 0, err)
    allow = np.full(err.shape, 4 * _F16_ULP)
    if nat is not None:
        allow = np.maximum(allow, 2 * np.nan_to_num(nerr, nan=np.inf, posinf=np.inf))
        ok_big = (g == nat) | (np.isinf(g) & (np.sign(g) == np.sign(exact)))
    else:
        ok_big = np.isinf(g) & (np.sign(g) == np.sign(exact))
    ok = np.where(fin, err <= allow.max(), np.where(big, ok_big, (g == exact) | np.isnan(g)))
    if not ok.all():
        i = tuple(np.argwhere(~ok)[0])
        nv = "" if nat is None else f", torch's float16 {nat[i]}"
        raise Mismatch(f"{what}: value {g[i]} vs exact {exact[i]}{nv}: error "
                       f"{err[i] * scale:.3g} > {allow.max() * scale:.3g} (twice torch's "
                       "float16 error, or 4 ulps of the largest value)")
