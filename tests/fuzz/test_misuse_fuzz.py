"""CI slice of the fuzzer's misuse mode (`misuse`): a few seeds of every op with one argument of
its functional call broken at a time must give no internal error, no hang and no unnamed error,
and the classifier must tell megengine's clear errors from the leaks it is there to find."""
import time
import warnings

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F

from . import misuse
from .misuse import Call, classify, misuse_case, run_broken
from .registry import OPS, draw

SEEDS_PER_OP = 3


@pytest.mark.parametrize("name", sorted(OPS))
def test_fuzz_misuse_slice(name):
    leaks = [f"{cls}: {desc}" for seed in range(SEEDS_PER_OP)
             for cls, desc in misuse_case(draw(name, seed))
             if cls in ("internal", "hang", "unnamed")]
    assert not leaks, "\n".join(leaks)


def _call(fn, **args):
    return Call(fn, args)


def _error(fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("no error")


def test_misuse_classes_tell_clear_errors_from_leaks():
    x = mge.tensor(np.zeros((2, 3), np.float32))
    # megengine's own raise, naming the function: clear
    call = _call(F.transpose, inp=x, pattern=(1, 0))
    assert run_broken(call, "pattern", (0, 0))[0] == "clear"
    # numpy's words from a line of megengine that calls numpy: internal
    assert classify(_error(np.broadcast_shapes, (2,), (3,)), call, "pattern") == "internal"
    # an AttributeError is internal wherever it comes from
    assert classify(_error(lambda: None.shape), call, "pattern") == "internal"
    # a clear type raised by megengine, whose message names neither: unnamed (Tensor's
    # constructor called from the user's code names no function)
    assert classify(_error(mge.tensor, "x"), call, "pattern") == "unnamed"
    # ... which the same refusal inside a public function names: clear
    assert run_broken(_call(F.exp, x=x), "x", "x")[0] == "clear"
    # a call that works is accepted
    assert run_broken(call, "pattern", [0, 1]) == ("accepted", "")


def test_misuse_captures_the_cases_own_functional_call():
    from .gen import Case

    x = np.zeros((2, 3), np.float32)
    # (F.sum calls other functions of megengine.functional itself: those are not the case's)
    case = Case("probe", [x], lambda t: F.sum(t, axis=1), None)
    results = misuse_case(case)
    assert results and all(d.startswith("functional.math.sum: ") for _, d in results)
    assert any(d.startswith("functional.math.sum: axis=1 -> huge: ") and c == "clear"
               for c, d in results)


def test_misuse_reports_a_call_that_does_not_return_as_a_hang(monkeypatch):
    monkeypatch.setattr(misuse, "HANG_S", 1)

    def slow(x):
        time.sleep(x)

    assert run_broken(_call(slow, x=0), "x", 30)[0] == "hang"


def test_the_int32_break_of_nan_and_infinite_values_casts_without_a_warning():
    """A drawn tensor may hold nan or infinities (the log of a negative): its "int32 values"
    break is 0 and int32's bounds there, where numpy's cast warned "invalid value encountered
    in cast" and gave an undefined value."""
    x = mge.tensor(np.array([np.nan, np.inf, -np.inf, 1e20, 2.5, -3.7], np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        broken = dict(misuse.breaks(x))["int32 values"]
    info = np.iinfo(np.int32)
    assert broken.dtype == np.int32
    np.testing.assert_array_equal(broken.numpy(), [0, info.max, info.min, info.max, 2, -4])
