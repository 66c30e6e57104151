"""CI slice of the differential fuzzer: a few fixed seeds of every fuzzed op (the full runs are
offline, `python -m tests.fuzz`), and checks that the runner itself catches what it must."""
import numpy as np
import pytest
import torch

import megengine.functional as F

from .gen import Case, Mismatch, run
from .registry import OPS, run_seed

SEEDS_PER_OP = 4  # ~100 ops: about 400 cases, a few seconds


@pytest.mark.parametrize("name", sorted(OPS))
def test_fuzz_slice(name):
    for seed in range(SEEDS_PER_OP):
        run_seed(name, seed)  # raises Mismatch (with the drawn case) on a discrepancy


@pytest.mark.parametrize("name", sorted(n for n, (fam, _) in OPS.items() if fam == "random"))
def test_random_family_wider_slice(name):
    # the random family's cases are cheap and its edges (tiny rates, bounds a float32 step
    # apart, size 0) are drawn rarely: 20 more seeds each (about 1.5 s in all); every
    # statistical test is seeded, at a false-alarm rate of ~1e-8
    for seed in range(SEEDS_PER_OP, SEEDS_PER_OP + 20):
        run_seed(name, seed)


def test_command_line(capsys):
    from .__main__ import main

    assert main(["--seeds", "2", "--op", "add", "--op", "conv2*"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "2 ops, 2 seeds each, 0 discrepancies" in out


def test_every_family_is_fuzzed():
    families = {family for family, _ in OPS.values()}
    assert families >= {"elemwise", "reduction", "matmul", "indexing", "shape", "sorting",
                        "activation", "loss", "normalization", "conv", "pool", "vision",
                        "module", "optimizer", "scheduler", "grad2", "quantization",
                        "transform", "random", "metric", "complex", "creation"}


def test_every_public_function_is_drawn():
    # docs/development.rst promises it: a public F name that no fuzz file calls (as F.<name>,
    # F.<namespace>.<name> or by its op name) is a gap in the sweep
    import glob
    import os
    import re

    here = os.path.dirname(os.path.abspath(__file__))
    src = "".join(open(f).read() for f in glob.glob(os.path.join(here, "*.py")))
    names = [n for n in dir(F) if not n.startswith("_") and callable(getattr(F, n))]
    missing = [n for n in names if not re.search(rf"\bF\.(\w+\.)*{n}\b|\"{n}\"", src)]
    assert not missing, f"no fuzz case draws F.{missing}"


# ----- the runner must fail where megengine is wrong -----

def _case(mge_fn, torch_fn, x=None, **kw):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) if x is None else x
    return Case("probe", [x], mge_fn, torch_fn, layouts=False, **kw)


def test_runner_catches_a_wrong_value():
    with pytest.raises(Mismatch, match="values differ"):
        run(_case(lambda a: a + 1e-3, lambda a: a), np.random.default_rng(0))


def test_runner_catches_a_wrong_gradient():
    # the same value, but a gradient scaled by 2 on megengine's side
    with pytest.raises(Mismatch, match="grad of input 0"):
        run(_case(lambda a: a * 2 - a.detach(), lambda a: a), np.random.default_rng(0))


def test_runner_compares_values_and_gradients_through_complex_values():
    z = (np.arange(6) + 1j * np.arange(6)[::-1]).astype(np.complex64).reshape(2, 3)
    assert run(_case(lambda a: a * a, lambda a: a * a, x=z), np.random.default_rng(0)) == "ok"
    with pytest.raises(Mismatch, match="values differ"):  # the imaginary part alone
        run(_case(lambda a: a + 1e-3j, lambda a: a, x=z), np.random.default_rng(0))
    with pytest.raises(Mismatch, match="grad of input 0"):  # the same values, gradient 0
        run(_case(lambda a: a.detach() * 2 + a * 0, lambda a: a * 2, x=z),
            np.random.default_rng(0))


def test_runner_catches_a_wrong_dtype_and_shape():
    with pytest.raises(Mismatch, match="dtype"):
        run(_case(lambda a: a.astype("float16"), lambda a: a), np.random.default_rng(0))
    with pytest.raises(Mismatch, match="shape"):
        run(_case(lambda a: a.reshape(3, 2), lambda a: a), np.random.default_rng(0))


def test_runner_wants_megengine_own_error_where_torch_refuses():
    # a raw numpy error deep in the engine is not a clear message
    def raw(a):
        return F.reshape(a, (6,)) + np.ones(4, np.float32).reshape(2, 3)  # numpy raises

    with pytest.raises(Mismatch, match="not its own"):
        run(_case(raw, lambda a: a.reshape(6) + torch.ones(4).reshape(2, 3)),
            np.random.default_rng(0))
    # megengine's own refusal where torch refuses too is a pass
    assert run(_case(lambda a: F.reshape(a, (4,)), lambda a: a.reshape(4)),
               np.random.default_rng(0)) == "error"


def test_runner_catches_acceptance_of_what_upstream_refuses():
    with pytest.raises(Mismatch, match="upstream refuses"):
        run(_case(lambda a: a, lambda a: a, refuse="probe"), np.random.default_rng(0))


# ----- the new families' own procedures must fail where megengine is wrong -----

def test_module_runner_catches_torchs_momentum_convention():
    import megengine.module as M

    from .modules import _bn_map, compare

    rng = np.random.default_rng(0)
    mm = M.BatchNorm2d(2, momentum=0.7)
    tm = torch.nn.BatchNorm2d(2, momentum=0.7)  # upstream's 0.7 is torch's 0.3
    steps = [[rng.standard_normal((3, 2, 2, 2)).astype(np.float32)] for _ in range(2)]
    bufs = ("running_mean", "running_var")
    with pytest.raises(Mismatch, match="buffer running_mean"):
        compare("bn", mm, tm, rng, steps, _bn_map(mm, ("weight", "bias") + bufs), buffers=bufs)


def test_module_runner_catches_a_missing_parameter_gradient():
    import megengine.module as M

    from .modules import compare, same_names

    class Detached(M.Linear):
        def forward(self, x):
            return F.linear(x, self.weight.detach(), self.bias)

    rng = np.random.default_rng(0)
    mm, tm = Detached(3, 2), torch.nn.Linear(3, 2)
    with pytest.raises(Mismatch, match="grad of parameter weight"):
        compare("linear", mm, tm, rng, [[np.ones((2, 3), np.float32)]], same_names(mm))


def test_optimizer_runner_catches_a_state_lost_in_the_round_trip():
    import megengine.optimizer as optim

    from .optim import _run_steps, _torch_ref

    class Forgetful(optim.Adam):
        def load_state_dict(self, state):  # the moments are lost
            pass

    init, groups = [np.ones((2, 3), np.float32)], [([0], {})]
    with pytest.raises(Mismatch, match="parameter 0"):
        _run_steps(np.random.default_rng(1), lambda g: Forgetful(g, lr=0.1),
                   _torch_ref(init, groups, lambda g: torch.optim.Adam(g, lr=0.1)), init,
                   groups, 4, {})


def test_training_loop_allows_twice_torch_float32s_own_error():
    # seed 70129: Adam (eps 1e-8) normalises a weight gradient of 3e-7 whose float32 rounding
    # is a few percent of it; torch float32 is 1.9e-3 off the float64 training, megengine 5.2e-4
    assert run_seed("training_loop", 70129) == "ok"


def test_training_loop_catches_torchs_momentum_convention(monkeypatch):
    import megengine.module as M

    bn = M.BatchNorm2d
    monkeypatch.setattr(M, "BatchNorm2d", lambda c, momentum: bn(c, momentum=1 - momentum))
    with pytest.raises(Mismatch, match="running_mean"):
        run_seed("training_loop", 70129)


def test_second_order_runner_catches_a_wrong_hessian():
    from . import grad2

    # megengine's side has torch's first derivative (3 x**2) but, with x**2 detached, a zero
    # second derivative: only the Hessian-vector product can tell
    grad2.UNARY["probe"] = (lambda x: 3 * x.detach() ** 2 * x, lambda x: x ** 3)
    try:
        x = np.array([[0.5, -1.2]], np.float32)
        with pytest.raises(Mismatch, match="Hessian-vector product"):
            grad2._check("probe", [("unary", "probe", (0,))], [x],
                         {1: np.ones((1, 2), np.float32)}, [np.ones((1, 2), np.float32)],
                         (1e-4, 1e-5))
    finally:
        del grad2.UNARY["probe"]


def test_second_order_runner_sets_aside_hessians_undefined_at_a_kink():
    # seed 115927: norm1 of logsoftmax0 of a (1, 1) input, a row of exact zeros, where the
    # norm's Hessian does not exist (torch: NaN, megengine: a finite value); first-order
    # gradients are still compared
    assert run_seed("second_order_chain", 115927) == "undefined Hessian"


def test_second_order_runner_sets_aside_a_maximum_torch_shares_among_ties():
    # seed 117360: max1 of maximum((3, 1) column, (1, 2) row below it): each row's two equal
    # maxima take the whole gradient each, upstream's rule (twice torch's, which shares it)
    assert run_seed("second_order_chain", 117360) == "tied maximum"


# ----- the third round's oracles must fail where megengine is wrong -----

def test_numpy_oracle_catches_a_wrong_gradient():
    from .oracle import numpy_oracle
    from .vision_warp import _correlation

    rng = np.random.default_rng(0)
    d1, d2 = (rng.standard_normal((1, 2, 4, 4)).astype(np.float32) for _ in range(2))
    args = (1, 1, 1, 1, 0, True)
    oracle = numpy_oracle(lambda a, b: _correlation(a, b, *args), stacked=True)
    run(Case("probe", [d1, d2], lambda a, b: F.vision.correlation(a, b, *args), oracle,
             layouts=False), rng)  # the right gradient passes
    with pytest.raises(Mismatch, match="grad of input 1"):
        run(Case("probe", [d1, d2], lambda a, b: F.vision.correlation(
            a, b * 2 - b.detach(), *args), oracle, layouts=False), rng)


def test_transform_statistics_catch_a_biased_flip():
    import megengine.data.transform as T

    from . import transforms

    class Biased(T.RandomHorizontalFlip):
        def __init__(self, prob=0.5, *, order=None):
            super().__init__(prob * 0.5, order=order)  # flips half as often as asked

    real = T.RandomHorizontalFlip
    T.RandomHorizontalFlip = Biased
    caught = 0
    try:
        for seed in range(60):
            case = transforms.OPS["RandomFlip"][1](np.random.default_rng(seed))
            if "Horizontal" not in case.desc or "(0.5)" not in case.desc:
                continue
            try:
                case.fn()  # (an image equal to its mirror passes: no flip to see)
            except Mismatch as e:
                assert "samples flipped" in str(e)
                caught += 1
    finally:
        T.RandomHorizontalFlip = real
    assert caught >= 3


@pytest.mark.parametrize("case, stream, words, seeds, least", [
    ("qat_network", 1, "quantize() against the QAT network", 6, 4),
    ("quantized_module", 2, "from_qat_module", 10, 5),
])
def test_quantized_checks_catch_a_truncating_quantized_kernel(monkeypatch, case, stream, words,
                                                              seeds, least):
    from megengine.core.tensor import dtype as mdtype

    from . import quant

    # the quantized layers' integer arithmetic truncating instead of rounding (halves away
    # from zero), the QAT layers' fake quantization unchanged
    monkeypatch.setattr(mdtype, "round_half_away", lambda xp, x: xp.trunc(x))
    bad = 0
    for seed in range(seeds):
        try:
            quant.OPS[case][1](np.random.default_rng([seed, stream])).fn()
        except Mismatch as e:
            assert words in str(e)
            bad += 1
    assert bad >= least


# ----- the random family's statistics must fail where megengine's sampler is wrong -----

def test_random_ks_catches_a_wrong_spread():
    from .random_stats import ks, normal_cdf

    x = np.random.default_rng(0).normal(0, 1.2, 20000).astype(np.float32)
    with pytest.raises(Mismatch, match="KS distance"):
        ks(x, normal_cdf(0.0, 1.0), "N(0, 1.2) as N(0, 1)")
    ks(x, normal_cdf(0.0, 1.2), "N(0, 1.2)")  # and passes the right law


def test_random_counts_catch_a_wrong_keep_rate():
    from .random_stats import counts

    with pytest.raises(Mismatch, match="Bernstein"):
        counts([5400], [0.5], 10000, "a keep rate 0.54 for 0.5")
    counts([5100], [0.5], 10000, "within the bound")


def _mismatches(op, seeds):
    """How many of ``seeds`` the fuzzer's case of ``op`` reports as a Mismatch (a planted bug's
    test asserts some do)."""
    caught = 0
    for seed in seeds:
        try:
            run_seed(op, seed)
        except Mismatch:
            caught += 1
    return caught


def test_random_uniform_family_catches_round_to_nearest(monkeypatch):
    # the float32 rounding of numpy's float64 draws that megengine.random.uniform had: some
    # drawn cases (bounds a few float32 steps apart) must fail
    import megengine.random.rng as rng_mod

    monkeypatch.setattr(rng_mod, "_floor_into_range",
                        lambda x, low, high, dtype: x.astype(dtype))
    assert _mismatches("random_uniform", range(60))


# ----- the fourth round: the ops no fuzz file reached, and the jit fuzzer's channel mask -----

def test_deformable_psroi_oracle_catches_a_wrong_offset_scale(monkeypatch):
    import megengine.functional as F

    real = F.vision.deformable_psroi_pooling

    def scaled(inp, rois, trans, no_trans, part, ph, pw, spp, scale, trans_std=0.1):
        return real(inp, rois, trans, no_trans, part, ph, pw, spp, scale, trans_std * 1.05)

    monkeypatch.setattr(F.vision, "deformable_psroi_pooling", scaled)
    assert _mismatches("deformable_psroi_pooling", range(12)) >= 4  # (cases without offsets, or whose offsets move nothing, still pass)


def test_jit_channel_mask_keeps_channels_tied_at_rounding_level():
    import megengine as mge
    import megengine.functional as F

    from .jit_dyn import _ABOVE

    # program 7280: every channel mean is 0.5 up to one ulp, so the plain rule c >= min(mean,
    # max) kept or dropped channels by rounding (a rewritten log1p moved one ulp)
    half = np.float32(0.5)
    down = np.nextafter(half, np.float32(0))
    c = mge.tensor(np.array([down, down, half], np.float32))  # the mean rounds up to 0.5
    assert not (c >= F.minimum(c.mean(), c.max())).numpy().all()
    assert eval(_ABOVE, {"F": F, "c": c}).numpy().all()  # noqa: S307
    # channels that differ by more than rounding are still told apart, and all-zero means
    # (rounding noise around 0) are all kept
    c = np.array([0.5, 0.5005, 0.7], np.float32)
    np.testing.assert_array_equal(eval(_ABOVE, {"F": F, "c": mge.tensor(c)}).numpy(),  # noqa
                                  [False, False, True])
    z = np.array([0.0, 3e-8, 0.0], np.float32)
    assert eval(_ABOVE, {"F": F, "c": mge.tensor(z)}).numpy().all()  # noqa: S307


def test_warp_oracle_rounds_a_nearest_half_to_even():
    from .vision_warp import _sample

    # float16 matrices make exact half-pixel source points (float16 case 50219 of
    # warp_affine_modes: a source row of -3.5). upstream 1.13 measured, warp_perspective
    # nearest NHWC on an arange(25) 5x5 image, rows shifted by 0.5: column 0 reads [0, 10, 10];
    # shifted by -3.5 with a reflect border: [15, 5, 5] (rows -4, -2, -2: halves to even)
    img = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    for off, border, expected in ((0.5, "replicate", [0, 10, 10]), (-3.5, "reflect", [15, 5, 5])):
        pts = np.zeros((1, 3, 1, 2))
        pts[0, :, 0, 1] = np.arange(3) + off
        got = _sample(img, pts, [0], border, 0.0, "nearest")
        np.testing.assert_array_equal(got[0, 0, :, 0], expected)
    assert run_seed("warp_affine_modes", 50219, "float16") == "ok"


def test_a_refused_case_keeps_the_values_it_is_refused_for():
    from .gen import case_layouts

    # nll_loss float16 case 51299: the label [0, -1] with ignore_index=0 is refused (-1 is out
    # of range), but a broadcast layout made it [0, 0], which megengine rightly computed
    assert run_seed("nll_loss", 51299, "float16") == "error"
    rng = np.random.default_rng(0)
    case = Case("probe", [np.arange(4.0, dtype=np.float32)], F.abs, torch.abs, refuse="why")
    names = {lay.name for _ in range(200) for lay in case_layouts(rng, case, case.inputs)}
    assert names and not any(n.startswith("broadcast") for n in names)


def test_every_quantized_module_is_drawn():
    from megengine.module import quantized as Q

    from . import quant

    layers = set(Q.__all__) - {"QuantizedModule", "QuantStub", "DequantStub"}
    drawn = set(quant.QAT_NETWORK_KINDS) | set(quant.QUANTIZED_MODULE_KINDS)
    assert layers <= drawn, f"no fuzz case draws quantized.{sorted(layers - drawn)}"
