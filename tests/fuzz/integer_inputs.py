"""The fuzzer's integer mode (``python -m tests.fuzz --int``): a drawn case whose inputs include
float32 tensors is run again with those inputs as int32, int8, uint8 or int64 tensors (bool
where the values are 0 and 1) holding the integers the drawn values round to (in their range,
signs kept; `converted_inputs.snap`), and megengine's outcome is checked against torch's
float32 op on the same values (docs/compatibility.rst, the dtype rules):

- a float result: float32 (float functions cast integers to float32, as upstream's), or the
  dtype of a float operand the case keeps (int8 + float16: float16), torch's within the case's
  tolerance;
- an integer or bool result: exactly torch's value (wrapped into the result's dtype where it
  overflows: int8 sums wrap, as upstream's); where torch's result is an integer or bool (an
  index, a comparison), its dtype or the case's; either result may instead equal torch's on
  the integer arrays themselves (its arithmetic wraps intermediates as upstream's does);
- a TypeError or ValueError of megengine's that names the integer (or bool) dtype and says what
  to do (``astype``, a float, the operator to use instead): a refusal, accepted;
- anything else (a wrong value, float64 for a float result, another error, a numpy warning
  about a cast) is a Mismatch. An in-place write takes the target's dtype (F.scatter of int32
  source into a bool tensor stores bools, as upstream's setitem), which the values of torch's
  float op do not show: a case that says which input it writes (``Case.writes``) has torch's
  values cast into that input's dtype first."""
import numpy as np

from .converted_inputs import Mode, run_converted, snap
from .gen import Mismatch, _close, pick

_KINDS = ("int32", "int8", "uint8", "int64")


class _Integer(Mode):
    name = "int"
    errors = (TypeError, ValueError)
    reruns_refused = False  # (upstream's refusals of floats: shifts, bit operations)
    native = True  # (integer arithmetic wraps: uint8 |1 - 2| is 255 in upstream and torch)

    def dtypes(self, rng, xs):
        out = []
        for x in xs:
            r = snap(x)
            lo, hi = (r.min(), r.max()) if r.size else (0, 0)
            kinds = [k for k in _KINDS if np.iinfo(k).min <= lo and hi <= np.iinfo(k).max]
            if ((r == 0) | (r == 1)).all() and rng.random() < 0.5:
                kinds = ["bool"]
            if not kinds:
                return None
            out.append(np.dtype(pick(rng, kinds)))
        return out

    def convert(self, x, dt):
        return snap(x).astype(dt)

    def values(self, q, dt):
        return q.astype(np.float64)

    def refusal(self, msg):  # (it names the dtype and says what to do: numpy's refusal of
        # bool arithmetic, upstream's and torch's too, names the operator to use instead)
        return any(w in msg for w in ("int", "bool")) and \
            any(w in msg for w in ("astype", "float", "instead"))

    def check(self, y, want_value, want_dtype, tol, what, kept=(), native=None):
        got, dt = y.numpy(), np.dtype(y.dtype)
        floats = [k for k in kept if k.kind in "fc"]  # (float16 + int8 is float16 or float32)
        want_float = {np.dtype(np.float32), np.result_type(*floats, np.float32),
                      np.result_type(*floats) if floats else np.dtype(np.float32)}
        if want_dtype.kind != "f":  # (an index, a comparison: torch's dtype or the case's)
            if dt != want_dtype:
                raise Mismatch(f"{what} dtype {dt}, expected {want_dtype}")
            _close(got, want_value, tol, what)
        elif dt.kind in "fc":
            if dt not in want_float:
                raise Mismatch(f"{what} dtype {dt}, expected one of "
                               f"{sorted(map(str, want_float))} (integers compute in float32, "
                               "or in the other operand's float dtype)")
            if native is not None and native.dtype == dt and native.shape == got.shape \
                    and np.allclose(got, native, *(tol or (1e-4, 1e-5)), equal_nan=True):
                return  # (torch's integer arithmetic agrees: a wrapped intermediate averaged,
                # uint8 l1_loss's mean |1 - 2| is 255.0 in upstream and torch)
            _close(got, want_value, tol, what)
        elif dt.kind in "iub":
            if native is not None and native.shape == got.shape and (
                    dt.kind in "iu" and native.dtype.kind in "iu" and
                    np.array_equal(got, native.astype(dt)) or
                    dt == native.dtype and np.array_equal(got, native)):
                return  # (torch's integer arithmetic agrees, wrapped into the result's dtype:
                # a wrapped intermediate, or uint8 l1_loss's sum, which keeps uint8 as
                # upstream's, where torch's sums in int64 (seed 102367: 256 here is 0); or
                # bool True + True, which is True in torch and here: docs/compatibility.rst)
            _close_integer(got, want_value, tol, what)
        else:
            raise Mismatch(f"{what} dtype {dt} for a float result")


INTEGER = _Integer()


def run_integer(case, rng):
    """Run ``case`` with its float32 inputs as integers or bools (`run_converted`)."""
    return run_converted(case, rng, INTEGER)


def _close_integer(got, want, tol, what):
    """Integer (or bool) result ``got`` against torch's float result ``want`` on the same values:
    equal once ``want`` wraps into ``got``'s dtype (within the tolerance where ``want`` is
    beyond float32's exact integers)."""
    want = want.astype(np.float64)
    if got.dtype.kind in "iu" and np.isfinite(want).all():
        info = np.iinfo(got.dtype)
        span = float(info.max) - float(info.min) + 1
        out = (want < info.min) | (want > info.max)  # (float64 loses int64's low bits)
        want = np.where(out, (want - info.min) % span + info.min, want)
    g = got.astype(np.float64)
    rtol, atol = tol or (1e-4, 1e-5)
    ok = (g == want) | ((np.abs(want) >= 2 ** 24) & np.isclose(g, want, rtol, atol))
    if not ok.all():
        i = tuple(np.argwhere(~ok)[0])
        raise Mismatch(f"{what} ({got.dtype}): value {got[i]} vs torch {want[i]} (an integer "
                       "result must be exact)")
