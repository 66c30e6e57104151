"""CI's slice of tests/fuzz/upstream_traced.py: this checkout against upstream MegEngine 1.13's
recorded results of 60 drawn traced networks (tests/fuzz/upstream_traced.json, written by
``python -m tests.fuzz.upstream_traced --upstream PYTHON --seeds 60 --record FILE``: upstream
itself is not installed in CI) and of 12 with ``--surgery``'s edits
(tests/fuzz/upstream_traced_surgery.json, ``--surgery --seeds 12 --start 61000``), and the
documented differences its rule counts."""
import os

from tests.fuzz import both_engines as be
from tests.fuzz import upstream_traced as ut

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upstream_traced.json")
OK = ["ok", None]


def test_this_checkout_gives_upstreams_recorded_results():
    # found with it before: names of modules read through a list or dict attribute, ids after
    # a pickle round trip, the order of a returned dict's keys and of get_dep_exprs, and
    # named_args of a function with parameters upstream lacks differed from upstream's
    n, shown, outcomes = ut.FUZZER.replay(RECORD)
    assert n == 60 and not shown, "\n".join(shown)
    assert outcomes["same"] >= 350, outcomes


def test_graph_edits_give_upstreams_recorded_results(monkeypatch):
    # ``--surgery``'s edits (tests/fuzz/upstream_traced_surgery.json, 12 programs from 61000):
    # a user module set on the traced module and called or read through in insert_exprs,
    # set_arg, insert_exprs(expr), replace_inputs; found with them before: getattr chains,
    # dropped submodules, ids of repeated reads, Tensor methods' parameter names
    monkeypatch.setattr(ut, "SURGERY", [True])
    n, shown, outcomes = ut.FUZZER.replay(RECORD.replace(".json", "_surgery.json"))
    assert n == 12 and not shown, "\n".join(shown)
    assert outcomes["same"] >= 80, outcomes


def test_every_program_builds_and_traces_here():
    results = be.run_all([ut.draw(s) for s in range(5000, 5020)], ut.PRELUDE)
    assert all(r[0] == OK for r in results), [r[0] for r in results if r[0] != OK]
    assert sum(len(r) for r in results) >= 100


def _grads(top, *values, again=True):
    return ["ok", [top] + [["w", list(values)]] + [again]]


def test_gradients_compare_beside_the_largest_entry_and_upstreams_other_runs_are_counted():
    program = ("net = Net()", ["out = backward_twice(tm, x)"])
    # (divided by ten times the largest entry: noise within 1e-4 of it agrees, as the
    # 1.5 % that float32 gives a cancelling sum of 1.4e-3 of the largest: seed 1060)
    _, got, _ = be.compare(program, [OK, _grads(9.1, 0.1, 0.0000137)],
                           [OK, _grads(9.1, 0.1, 0.0000146)], ut.rule, ut.FUZZER.tol)
    assert got is None
    _, got, _ = be.compare(program, [OK, _grads(9.1, 0.1, 0.02)], [OK, _grads(9.1, 0.1, 0.03)],
                           ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"
    # upstream's second backward gave other gradients than its first: its first is not
    # compared; where this fork's two differ too (an input written in place), it is
    _, got, counts = be.compare(program, [OK, _grads(44.9, 0.1, 0.02)],
                                [OK, _grads(36.0, 0.1, 0.03, again=False)], ut.rule,
                                ut.FUZZER.tol)
    assert got is None and counts["upstream's gradient of another run"] == 1
    _, got, _ = be.compare(program, [OK, _grads(44.9, 0.1, 0.02, again=False)],
                           [OK, _grads(36.0, 0.1, 0.03, again=False)], ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"


def test_documented_differences_need_their_program():
    mine, theirs = [OK, _grads(1.0, 1.0, 0.5)], [OK, _grads(1.0, 1.0, 0.9)]
    pooled = ("self.l0 = M.MaxPool2d(3, 1, 1)", ["out = backward_twice(tm, x)"])
    _, got, counts = be.compare(pooled, mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["overlapping max pooling's ties"] == 1
    plain = ("self.l0 = M.ReLU()", ["out = backward_twice(tm, x)"])
    _, got, _ = be.compare(plain, mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"
    fused = ["out = r(optimize(tm, ['FuseAddMul', 'FuseConvBn'])(x2))"]
    mine, theirs = [OK, ["ok", [1.0]]], [OK, ["ok", [2.0]]]
    _, got, counts = be.compare(("h += 1", fused), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["upstream's FuseAddMul drops in-place writes"] == 1
    _, got, _ = be.compare(("h = h + 1", fused), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"


def test_a_call_compile_keeps_for_its_write_into_the_input_ends_the_comparison():
    # surgery seed 63947: this fork's compile keeps a submodule call that writes into the
    # graph's input (`h += 1`) though no output needs it; upstream 1.13's drops it
    kept = "Net.Graph (self, x) {\n\t%3:\ts0_out = s0(x, )\n\treturn x\n}"
    dropped = "Net.Graph (self, x) {\n\t\n\treturn x\n}"
    step = ["tm.graph.replace_node({n: y})\ntm.graph.compile()\nout = [graphs(tm), r(tm(x))]"]
    mine, theirs = [OK, ["ok", [[kept], [2.0]]]], [OK, ["ok", [[dropped], [1.0]]]]
    _, got, counts = be.compare(("h += 1", step), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["compile keeps a call that writes into the graph's input"] == 1
    _, got, _ = be.compare(("h = h + 1", step), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"
    _, got, _ = be.compare(("h += 1", step), theirs, mine, ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"  # (upstream keeping more is no such case)


def test_upstreams_fold_across_a_relu_is_counted_where_the_program_has_one():
    step = ["out = r(optimize(tm, 'FuseConvBn')(x))"]
    mine, theirs = [OK, ["ok", [0.198]]], [OK, ["ok", [0.202]]]
    _, got, counts = be.compare(("self.l0 = M.ConvRelu2d(4, 4, 1)", step), mine, theirs,
                                ut.rule, ut.FUZZER.tol)
    assert got is None and counts["upstream folds a batch norm across ConvRelu2d's ReLU"] == 1
    _, got, _ = be.compare(("self.l0 = M.Conv2d(4, 4, 1)", step), mine, theirs, ut.rule,
                           ut.FUZZER.tol)
    assert got == "step 1: values differ"


def test_an_edit_both_refuse_ends_the_comparison_but_a_read_does_not():
    # upstream 1.13 stops an edit part way (seed 32757: its compile raised KeyError while
    # removing exprs), so the graphs differ after both refuse it; both refusing a read leaves
    # them alike, and later steps are still compared
    raised = ["raise", "RuntimeError", "", ["RuntimeError"]]
    later = [["ok", [1.0]], ["ok", [2.0]]]
    edit = ("pass", ["e.disable_remove()\ntm.graph.compile()\nout = r(tm(x))", "out = r(tm(x))"])
    _, got, counts = be.compare(edit, [OK, raised, later[0]], [OK, raised, later[1]], ut.rule,
                                ut.FUZZER.tol)
    assert got is None and counts["both refuse an edit, at other points"] == 1
    read = ("pass", ["out = r(tm(x))", "out = r(tm(x))"])
    _, got, _ = be.compare(read, [OK, raised, later[0]], [OK, raised, later[1]], ut.rule,
                           ut.FUZZER.tol)
    assert got == "step 2: values differ"


def test_rounding_residues_of_normalizations_are_told_by_the_values_normalized():
    # the program runs again here, its normalizations watched (`ut._watched`): a group of
    # equal values is normalized to rounding residues over sqrt(eps) (seeds 41818, 42956), a
    # sum of normalized values cancels to residues (seed 33184); a group with spread, or a sum
    # far from 0, is compared
    flat = "x = mge.tensor(np.full((2, 4, 3, 3), 1.3, 'float32'))\n"
    spread = "x = data(1, (2, 4, 3, 3))\n"
    step = ["out = r(norm())"]
    mine, theirs = [OK, ["ok", [0.0, 0.0]]], [OK, ["ok", [5.65e-5, 0.5]]]
    norm = "norm = lambda: F.nn.instance_norm(x, False)"
    _, got, counts = be.compare((flat + norm, step), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["normalising nearly constant groups: rounding residues over "
                                  "sqrt(eps)"] == 1
    _, got, _ = be.compare((spread + norm, step), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"
    summed = ("x = data(1, (3, 4, 8, 8)) * 0.05 + 1\n"  # (|mean| / std 35: seed 34810's)
              "norm = lambda: F.nn.group_norm(x, 2, False).sum()")
    _, got, counts = be.compare((summed, step), [OK, ["ok", -1e-3]], [OK, ["ok", 1e-3]],
                                ut.rule, ut.FUZZER.tol)
    assert got is None and counts["sums of normalized values: rounding residues of their "
                                  "cancellation"] == 1
    _, got, _ = be.compare((summed, step), [OK, ["ok", -1e-3]], [OK, ["ok", 0.5]], ut.rule,
                           ut.FUZZER.tol)
    assert got == "step 1: values differ"
    # F.normalize of a row of norm 4.9e-5 (seed 36600's)
    rows = ("x = mge.tensor(np.eye(4, dtype='float32') * 4.9e-5)\n"
            "norm = lambda: F.normalize(x, axis=1)")
    _, got, counts = be.compare((rows, step), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["normalising rows of tiny norm: rounding residues over the "
                                  "norm"] == 1


def test_residues_of_cancelled_huge_values_are_told_by_the_magnitudes_the_ops_saw():
    # a step whose ops see values beyond ut.HUGE cancels to float32 residues of their size
    # (surgery seed 66230: nested squares, centred, the channels summed: exactly 0); the same
    # step on values near 1, or a number beyond EPS32 * n * the largest, is compared
    step = ["out = r(centred())"]
    mine, theirs = [OK, ["ok", [64.0, 3.0]]], [OK, ["ok", [-128.0, 3.0]]]
    centred = "centred = lambda: (x - x.mean(axis=1, keepdims=True)).sum(axis=1)"
    huge = "x = (data(1, (2, 4, 3, 3)) * 100) ** 4\n"
    _, got, counts = be.compare((huge + centred, step), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["values beyond 1e6 cancelled: float32 residues of their "
                                  "size"] == 1
    small = "x = data(1, (2, 4, 3, 3))\n"
    _, got, _ = be.compare((small + centred, step), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"
    far = [OK, ["ok", [64.0, 3e9]]]  # (the bound here: 1.2e-7 * 72 * 1e8 = 860)
    _, got, _ = be.compare((huge + centred, step), mine, far, ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"
    # an infinity among the values bounds nothing: the finite ones set the bound
    inf = "x = F.concat([data(1, (2, 4, 3, 3)), mge.tensor(np.full((1, 4, 3, 3), np.inf))])\n"
    _, got, _ = be.compare((inf + centred, step), mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"


def test_subnormal_gradients_that_upstream_flushes_to_zero_are_set_apart():
    # upstream 1.13's CPU kernels flush subnormal results to 0: where every gradient here is
    # subnormal, upstream's are all 0 (its `grads` top is then 1.0)
    step = ("pass", ["out = backward_twice(tm, x)"])
    mine = [OK, ["ok", [1.8e-42, ["w", [0.1, 0.0]], True]]]
    zeros = [OK, ["ok", [1.0, ["w", [0.0, 0.0]], True]]]
    _, got, counts = be.compare(step, mine, zeros, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["subnormal gradients: upstream flushes them to 0"] == 1
    _, got, _ = be.compare(step, mine, [OK, ["ok", [1.0, ["w", [0.1, 0.0]], True]]], ut.rule,
                           ut.FUZZER.tol)
    assert got == "step 1: values differ"  # (upstream's gradients are not 0)
    normal = [OK, ["ok", [2e-30, ["w", [0.1, 0.0]], True]]]
    _, got, _ = be.compare(step, normal, zeros, ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"  # (this side's are normal numbers)


def test_gradients_that_cancel_to_noise_are_counted_where_both_sides_are_that_small():
    # a gradient that is 0 exactly (a softmax's outputs summed with equal weights) is float32
    # noise of its terms on each side: 5.7e-7 here, 4.4e-7 upstream (seed 45322)
    step = ("pass", ["out = backward_twice(tm, x)"])
    mine = [OK, ["ok", [5.7e-07, ["w", [0.1, 0.08]], True]]]
    theirs = [OK, ["ok", [4.4e-07, ["w", [0.1, -0.008]], True]]]
    _, got, counts = be.compare(step, mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got is None and counts["gradients that cancel to float32 noise"] == 1
    theirs = [OK, ["ok", [3e-05, ["w", [0.1, -0.008]], True]]]
    _, got, _ = be.compare(step, mine, theirs, ut.rule, ut.FUZZER.tol)
    assert got == "step 1: values differ"  # (upstream's are not that small)
