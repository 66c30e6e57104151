"""CI's slice of tests/fuzz/upstream_optim.py: this checkout against upstream MegEngine 1.13's
recorded results of 60 drawn optimizer programs (tests/fuzz/upstream_optim.json, written by
``python -m tests.fuzz.upstream_optim --upstream PYTHON --seeds 60 --record FILE``), and the
documented difference its rule counts."""
import os

from tests.fuzz import both_engines as be
from tests.fuzz import upstream_optim as uo

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upstream_optim.json")
OK = ["ok", None]


def test_this_checkout_gives_upstreams_recorded_results():
    n, shown, outcomes = uo.FUZZER.replay(RECORD)
    assert n == 60 and not shown, "\n".join(shown)
    assert outcomes["same"] >= 300, outcomes
    # upstream's results, not this checkout's: its documented difference is in it
    assert outcomes["add_param_group gives state"] >= 5, outcomes


def test_values_within_rounding_agree_and_others_are_findings():
    program = ("opt = 1", ["opt.step()\nout = snap()"])
    _, got, _ = be.compare(program, [OK, ["ok", [1.0, 0.0080002]]],
                           [OK, ["ok", [1.0, 0.0080001]]], uo.rule, uo.FUZZER.tol)
    assert got is None
    _, got, _ = be.compare(program, [OK, ["ok", [1.0, 0.0081]]], [OK, ["ok", [1.0, 0.008]]],
                           uo.rule, uo.FUZZER.tol)
    assert got == "step 1: values differ"


def test_a_state_apart_after_add_param_group_is_counted():
    program = ("opt = 1", ["opt.add_param_group({'params': [q]})\nout = snap()",
                           "opt.step()\nout = snap()"])
    mine, theirs = [OK, ["ok", 1], ["ok", [2.0]]], [OK, ["ok", 1], ["ok", [3.0]]]
    _, got, counts = be.compare(program, mine, theirs, uo.rule, uo.FUZZER.tol)
    assert got is None and counts["add_param_group gives state"] == 1


def test_every_program_builds_here():
    results = be.run_all([uo.draw(s) for s in range(7000, 7040)], uo.PRELUDE)
    assert all(r[0] == OK for r in results)
    assert sum(len(r) for r in results) >= 200


def test_zero_grad_of_an_overflowed_gradient_gives_zeros_where_upstream_leaves_nan():
    program = ("opt = 1", ["opt.zero_grad()\nout = snap()"])
    _, got, counts = be.compare(program, [OK, ["ok", [[1.0, [0.0, 0.0]]]]],
                                [OK, ["ok", [[1.0, ["nan", "nan"]]]]], uo.rule, uo.FUZZER.tol)
    assert got is None and counts["zero_grad of a non-finite gradient gives zeros"] == 1
