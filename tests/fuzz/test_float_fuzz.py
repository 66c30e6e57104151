"""CI slice of the fuzzer's float modes (`float_inputs`): a few seeds of every op with its
float32 inputs as float64 and as float16 tensors, and checks that the modes catch what they
must."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F

from .float_inputs import run_float16, run_float64
from .gen import Case, Mismatch
from .registry import OPS, run_seed

SEEDS_PER_OP = 3

# what the modes still find, left for later (python -m tests.fuzz --float64 / --float16)
KNOWN = {"float64": {}, "float16": {}}


@pytest.mark.parametrize("mode", ["float64", "float16"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_fuzz_float_slice(name, mode):
    if name in KNOWN[mode]:
        pytest.skip(KNOWN[mode][name])
    for seed in range(SEEDS_PER_OP):
        run_seed(name, seed, mode)  # raises Mismatch (with the drawn case)


def _run(run, mge_fn, torch_fn, x=None):
    x = np.linspace(-2, 3, 6, dtype=np.float32).reshape(2, 3) if x is None else x
    return run(Case("probe", [x], mge_fn, torch_fn, layouts=False), np.random.default_rng(0))


def test_float64_mode_catches_downcasts_and_float32_arithmetic():
    assert _run(run_float64, F.exp, torch.exp) == "ok"
    assert _run(run_float64, lambda x: F.argmax(x, 1), lambda v: torch.argmax(v, 1).int()) \
        == "ok"
    with pytest.raises(Mismatch, match="dtype float32, expected float64"):
        _run(run_float64, lambda x: F.exp(x.astype("float32")), torch.exp)
    with pytest.raises(Mismatch, match="values differ"):  # float32 arithmetic, cast back
        _run(run_float64, lambda x: F.exp(x.astype("float32")).astype("float64"), torch.exp)


def test_float16_mode_holds_the_error_to_torchs_float16_error():
    x = np.full(4096, 0.1, np.float32)  # a long float16 sum: torch adds in float32
    assert _run(run_float16, F.sum, torch.sum, x) == "ok"
    assert _run(run_float16, F.exp, torch.exp) == "ok"
    with pytest.raises(Mismatch, match="twice torch's float16 error"):  # stops growing at 256
        _run(run_float16, lambda v: mge.tensor(np.cumsum(v.numpy())[-1:]),
             lambda v: torch.cumsum(v, 0)[-1:], x)
    with pytest.raises(Mismatch, match="dtype float32, expected float16"):
        _run(run_float16, lambda v: F.exp(v.astype("float32")), torch.exp)


def test_float_modes_refuse_no_dtype_silently():
    def refuse(x):
        raise TypeError("probe: float64 is not taken")  # (it does not say float32 only)

    with pytest.raises(Mismatch, match="megengine raised TypeError"):
        _run(run_float64, refuse, lambda v: v)


def test_float16_mode_takes_complex64_for_a_complex_result():
    # float16 and a complex scalar: complex64 (there is no complex32; torch's CPU kernels for
    # it are few), which the mode accepts where torch has none to compare
    assert _run(run_float16, lambda x: x / -1.5j, lambda v: v / -1.5j) == "ok"


def test_float_modes_rerun_cases_holding_nan_and_infinity():
    # (the integer and quantized modes skip them: no integer form)
    x = np.array([[1.0, np.nan, -np.inf], [np.inf, 0.5, np.nan]], np.float32)
    for run in (run_float64, run_float16):
        assert _run(run, F.exp, torch.exp, x) == "ok"
        with pytest.raises(Mismatch, match="NaN"):  # a NaN lost on the way
            _run(run, lambda a: F.exp(F.where(F.isnan(a), F.zeros_like(a), a)), torch.exp, x)


def test_float16_mode_judges_an_overflow_to_infinity_by_value():
    # logsumexp of 70000 equal values sums 70000 ones in float32, which round to inf in
    # float16 (numpy warns of the cast), as torch's float16 op and upstream's do; the value
    # rule, not the warning, judges it (float16 case 100021)
    x = np.full(70000, 1.5, np.float32)
    lse = lambda v: F.logsumexp(v, 0)  # noqa: E731
    assert _run(run_float16, lse, lambda v: torch.logsumexp(v, 0), x) == "ok"
    with pytest.raises(Mismatch, match="value inf vs exact"):  # torch's, finite, allows none
        _run(run_float16, lse, lambda v: torch.logsumexp(v.float(), 0).to(v.dtype), x)


def test_float16_mode_skips_values_beyond_its_range_beside_a_nan():
    # a NaN maximum hid 3e8 from the range test: converted to inf, it failed an op that
    # torch's float64 oracle saw finite (fake_quant_tensor, float16 case 100056)
    x = np.array([np.nan, -3.25e8, 1.0, np.inf], np.float32)
    assert _run(run_float16, F.exp, torch.exp, x) == "skip"
    assert _run(run_float16, F.exp, torch.exp, x[[0, 2, 3]]) == "ok"  # (NaN, inf: rerun)


def test_float16_mode_compares_infinite_results_without_warning():
    # an infinite exact value is compared by its sign, outside the error's arithmetic: the
    # masked inf - inf there warned "invalid value encountered in subtract" on every such case
    # (sort_nan, float16 case 100430)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_seed("sort_nan", 100430, "float16") == "ok"
        x = np.array([[np.inf, 1.0, -np.inf], [2.0, -np.inf, np.inf]], np.float32)
        assert _run(run_float16, lambda a: F.sort(a)[0], lambda v: torch.sort(v)[0], x) == "ok"


def test_float16_mode_gives_the_exact_result_the_constants_the_engines_see():
    # seed 112278: a running mean of 0.9 * rm + 0.1 * mean cancels to -0.00435; the exact
    # update of the float32 rm0 lies 4.5 float16 steps from that of its float16 value, which
    # both engines update (this side to 0.2 steps)
    assert run_seed("batch_norm2d", 112278, "float16") == "ok"

