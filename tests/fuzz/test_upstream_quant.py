"""CI's slice of tests/fuzz/upstream_quant.py: this checkout against upstream MegEngine 1.13's
recorded results of 60 drawn quantization-aware training programs
(tests/fuzz/upstream_quant.json, written by ``python -m tests.fuzz.upstream_quant --upstream
PYTHON --seeds 60 --record FILE``: upstream itself is not installed in CI), and the rule's
documented differences and tolerances."""
import pytest

from devices import host_default_device  # noqa: F401  (the fixture below)
from tests.fuzz import both_engines as be
from tests.fuzz import upstream_quant as uq

# (quantize() makes quantized tensors, which live on CPU devices only)
pytestmark = pytest.mark.usefixtures("host_default_device")

RECORD = __file__.replace("test_upstream_quant.py", "upstream_quant.json")
OK = ["ok", None]


def test_this_checkout_gives_upstreams_recorded_results():
    # found with it before: PassiveObserver(dtype=..., mode=...) raised (seeds 0, 5, 15, ...),
    # SyncMinMaxObserver stopped recording in eval mode (upstream's does not), and
    # HistogramObserver refused a layer's outputs within a few float32 steps (seed 5)
    n, shown, outcomes = uq.FUZZER.replay(RECORD)
    assert n == 60 and not shown, "\n".join(shown)
    assert outcomes["same"] >= 230, outcomes
    # upstream's results, not this checkout's: the documented difference is in it, and float32
    # rounding's (which of them a change of this engine's sums meets may move)
    assert outcomes["a reset_qconfig that raised: the network as it was here"] >= 5
    assert sum(outcomes[k] for k in (
        "quantized values at rounding boundaries, each rounded its own way",
        "EasyQuant's candidates alike to float32 rounding", "same to float32 rounding")) >= 8


def test_values_apart_beyond_rounding_are_findings():
    program = ("qat = 1", ["out = [1.0, 0.5, 2e-5]"])
    # within 1e-3 of themselves and 1e-4 of the step's largest magnitude: the same
    assert uq._apart([1.0, 0.5, 2e-5], [1.0009, 0.5004, 1.2e-5]) == set()
    _, got, counts = be.compare(program, [OK, ["ok", [1.0, 0.5, 2e-5]]],
                                [OK, ["ok", [1.0009, 0.5004, 1.2e-5]]], uq.rule, uq.FUZZER.tol)
    assert got is None and counts["same to float32 rounding"] == 1
    # a quantization step apart (1/127 of the range), or a layout apart: findings
    assert uq._apart([1.0, 0.5], [1.0, 0.5079]) == {((), 1)}
    assert uq._apart([[1.0], "x"], [[1.0, 2.0], "x"]) is None
    mine, theirs = [OK, ["ok", [1.0, 0.5]]], [OK, ["ok", [1.0, 0.5079]]]
    _, got, _ = be.compare(("qat = 1", ["out = [1.0, 0.5]"]), mine, theirs, uq.rule,
                           uq.FUZZER.tol)
    assert got == "step 1: values differ"


def test_a_reset_qconfig_that_raised_on_both_sides_ends_the_comparison():
    program = ("qat = 1", ["Q.reset_qconfig(qat, Q.passive_qconfig)", "out = qparams(qat)"])
    raised = ["raise", "ValueError", "", ["ValueError"]]
    _, got, counts = be.compare(program, [OK, raised, ["ok", [1.0]]],
                                [OK, raised, ["ok", [2.0]]], uq.rule, uq.FUZZER.tol)
    assert got is None and counts["a reset_qconfig that raised: the network as it was here"] == 1


def test_a_difference_after_a_step_apart_within_rounding_ends_the_comparison():
    program = ("qat = 1", ["out = [1.0]", "out = [2.0]"])
    _, got, counts = be.compare(program, [OK, ["ok", [1.0]], ["ok", [2.0]]],
                                [OK, ["ok", [1.0009]], ["ok", [2.1]]], uq.rule, uq.FUZZER.tol)
    assert got is None and counts["states apart since an earlier step's float32 rounding"] == 1


def test_a_batch_norm_over_a_channel_of_equal_values_is_told():
    # a layer whose weights quantize to 0 hands the batch norm after it one value per channel
    build = ("C = 1\nnet = M.ConvBn2d(1, 2, 1)\nnet.conv.weight.set_value(np.zeros((2, 1, 1, 1), "
             "'float32'))\nqat = Q.quantize_qat(net, qconfig=Q.min_max_fakequant_qconfig)")
    sources = [build, "out = r(qat(X(0)).numpy())"]
    assert uq._flat_norms(sources, 1, 0)
    sources[0] = build.replace("np.zeros(", "np.ones(")
    assert not uq._flat_norms(sources, 1, 0)


def test_every_program_builds_here():
    results = be.run_all([uq.draw(s) for s in range(7000, 7030)], uq.PRELUDE)
    assert all(r[0] == OK for r in results)
    assert sum(r[0] == "ok" for rs in results for r in rs[1:]) >= 120
