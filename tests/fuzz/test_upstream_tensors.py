"""CI's slice of tests/fuzz/upstream_tensors.py: this checkout against upstream MegEngine 1.13's
recorded results of 400 drawn eager Tensor programs (tests/fuzz/upstream_tensors.json, written
by ``python -m tests.fuzz.upstream_tensors --upstream PYTHON --seeds 400 --record FILE``), and
the documented differences its rule counts."""
import os

import pytest

from tests.fuzz import both_engines as be
from tests.fuzz import upstream_tensors as ut

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "upstream_tensors.json")


def test_this_checkout_gives_upstreams_recorded_results():
    n, shown, outcomes = ut.FUZZER.replay(RECORD)
    assert n == 400 and not shown, "\n".join(shown)
    assert outcomes["same"] >= 2000, outcomes
    # upstream's results, not this checkout's: its documented differences are in it
    assert outcomes["x[...] = number: upstream's x becomes 0-d"] >= 15, outcomes
    assert outcomes["float % takes the divisor's sign (Python's rule)"] >= 10, outcomes


OK = ["ok", None]


def _snap(shape):
    return ["ok", [["a", ["Tensor", "float32", shape, [1.0], None]]]]


@pytest.mark.parametrize("step,mine,theirs,label", [
    ("a[...] = 3\nout = snap()", _snap([2]), _snap([]), "x[...] = number: upstream's x becomes 0-d"),
    ("b[b > 0] = 0\nout = snap()", _snap([2]), _snap([3]),
     "x[x > 0] = v: upstream's mask of x itself is wrong"),
    ("n3 = F.copy(a)\nNAMES.append('n3')\nout = snap()", _snap([]), _snap([1]),
     "F.copy of a 0-d tensor stays 0-d"),
    ("a %= 3\nout = snap()", _snap([2]), _snap([3]),
     "float % takes the divisor's sign (Python's rule)"),
    ("out = value(np.ones(a.shape, 'float32') + a)", ["ok", ["Tensor", "float32", [], 1.0]],
     ["ok", ["Tensor", "float32", [1], [1.0]]], "a 0-d numpy array operand keeps a 0-d result"),
    ("n3[[0, 1]] = 4\nout = snap()",
     ["raise", "IndexingError", "index 1 is out of bounds for axis 0", ["IndexingError"]],
     _snap([1]), "an index out of range is refused (upstream: logged, the rest written)"),
    ("n3 = a[:, 1]\nNAMES.append('n3')\nout = snap()",
     ["raise", "IndexingError", "too many indices for array", ["IndexingError"]], _snap([]),
     "too many indices are refused (upstream: an assertion or a wrong value)"),
])
def test_documented_differences_are_counted_and_end_the_comparison(step, mine, theirs, label):
    _, got, counts = be.compare(("a = 1", [step, "out = 1"]), [OK, mine, ["ok", 1]],
                                [OK, theirs, ["ok", 2]], ut.rule)
    assert got is None and counts[label] == 1


def test_other_differences_in_those_steps_are_findings():
    # a mask write that differs where the mask is its own variable, a copy that is not 0-d
    for step, mine, theirs in [("b[m > 0] = 0\nout = snap()", _snap([2]), _snap([3])),
                               ("n3 = F.copy(a)\nNAMES.append('n3')\nout = snap()", _snap([2]),
                                _snap([1]))]:
        _, got, _ = be.compare(("a = 1", [step]), [OK, mine], [OK, theirs], ut.rule)
        assert got == "step 1: values differ"


def test_every_program_builds_here():
    results = be.run_all([ut.draw(s) for s in range(5000, 5050)], ut.PRELUDE)
    assert all(r[0] == OK for r in results)
    assert sum(len(r) for r in results) >= 200
