"""CI's slice of tests/fuzz/upstream_modules.py: this checkout against upstream MegEngine 1.13's
recorded results of 300 drawn module-tree programs (tests/fuzz/upstream_modules.json, written
by ``python -m tests.fuzz.upstream_modules --upstream PYTHON --seeds 300 --record FILE``:
upstream itself is not installed in CI), its documented differences, and files saved by another
interpreter loaded here."""
import os
import sys

import pytest

from devices import host_default_device  # noqa: F401  (the fixture below)
from tests.fuzz import both_engines as be
from tests.fuzz import upstream_modules as um

# (quantize_qat's programs convert the trees: quantized tensors live on CPU devices only)
pytestmark = pytest.mark.usefixtures("host_default_device")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORD = os.path.join(ROOT, "tests", "fuzz", "upstream_modules.json")


def test_this_checkout_gives_upstreams_recorded_results():
    # found with it before: quantize() and quantize_qat() gave the new layers the mode of the
    # layers they replaced (upstream's start in training mode), a QAT LinearBn1d shared the
    # float layer's unused bias: 11 programs of these 300 differed
    n, shown, outcomes = um.FUZZER.replay(RECORD)
    assert n == 300 and not shown, "\n".join(shown)
    assert outcomes["same"] >= 1750, outcomes  # (steps after a refused load are not compared)
    # upstream's results, not this checkout's: what only upstream refuses (0-d values and
    # float64 arrays given to load_state_dict) and documented differences are in it
    assert outcomes["upstream raises"] >= 30, outcomes
    assert outcomes["quantize_qat again"] >= 1, outcomes
    assert outcomes["upstream's del of a slice"] >= 1, outcomes


LOAD = "before = None\nsd = {}\nbefore = state()\nout = net.load_state_dict(sd)"
REFUSED = ["raise", "KeyError", "", ["KeyError"]]


def _rule(mine, theirs, *steps):
    return be.compare(("net = Node()", list(steps)), mine, theirs, um.rule)


def test_a_refused_load_that_changed_the_state_here_is_a_finding():
    after = ["ok", [[["w", 1.0]], [["w", 2.0]], False]]
    i, got, _ = _rule([["ok", None], REFUSED, after], [["ok", None], REFUSED, after],
                      LOAD, um.AFTER_LOAD)
    assert (i, got) == (2, "step 2: a refused call changed the state")


def test_a_refused_load_keeps_the_state_here_while_upstreams_loaded_part_of_it():
    mine = [["ok", None], REFUSED, ["ok", [[["w", 1.0]], [["w", 1.0]], False]], ["ok", 5]]
    theirs = [["ok", None], REFUSED, ["ok", [[["w", 1.0]], [["w", 2.0]], False]], ["ok", 6]]
    i, got, counts = _rule(mine, theirs, LOAD, um.AFTER_LOAD, "out = 1")
    assert got is None and counts["state kept (upstream's partly written)"] == 1


@pytest.mark.parametrize("steps,label", [
    (["net.q = 1", "Q.quantize_qat(net)\nout = 1", "qnet = Q.quantize_qat(net)\nout = 2"],
     "quantize_qat again"),
    (["del o1[::2]\nout = 1"], "upstream's del of a slice"),
])
def test_documented_differences_are_counted_and_end_the_comparison(steps, label):
    mine = [["ok", None]] + [["ok", 1]] * (len(steps) - 1) + [["ok", "here"], ["ok", 0]]
    theirs = [["ok", None]] + [["ok", 1]] * (len(steps) - 1) + [["ok", "there"], ["ok", 9]]
    i, got, counts = _rule(mine, theirs, *steps, "out = 0")
    assert got is None and counts[label] == 1


def test_upstreams_quantize_missing_a_layer_first_is_counted_only_there():
    # (seeds 112974, 113111: a layer to replace inside a tuple, which this side refuses, and a
    # layer upstream's quantize has no entry for, which it meets first)
    mine = [["ok", None], ["raise", "TypeError", "cannot replace", ["TypeError", "Exception"]]]
    theirs = [["ok", None], ["raise", "KeyError", "<class 'megengine.module.conv.LocalConv2d'>",
                             ["KeyError", "LookupError", "Exception"]]]
    step = "Q.quantize(Q.quantize_qat(net))\nout = 1"
    _, got, counts = _rule(mine, theirs, step)
    assert got is None and counts["upstream's quantize has no entry for a layer first"] == 1
    _, got, _ = _rule(mine, theirs, "net.load_state_dict({})\nout = 1")
    assert got.startswith("step 1: an error of another type")


def test_a_first_quantize_qat_that_differs_is_a_finding():
    i, got, _ = _rule([["ok", None], ["ok", 1]], [["ok", None], ["ok", 2]],
                      "Q.quantize_qat(net)\nout = 1")
    assert got == "step 1: values differ"


def test_every_program_builds_here_or_refuses_a_non_str_key():
    # (a dict holding a Module or Tensor under an int key: upstream asserts, this fork raises a
    # StructureKeyError, which is an AssertionError and a TypeError)
    results = be.run_all([um.draw(s) for s in range(1000, 1060)], um.PRELUDE)
    builds = [r[0] for r in results]
    assert all(b[0] == "ok" or b[1] == "StructureKeyError" for b in builds), builds
    assert sum(b[0] == "ok" for b in builds) >= 50
    assert sum(len(r) for r in results) >= 300  # the steps ran


def test_files_another_interpreter_saved_load_here(tmp_path, monkeypatch):
    # (programs that save and load: the other side writes its files, this side loads them)
    programs = [p for p in map(um.draw, range(40)) if any("saved_twin" in s for s in p[1])][:4]
    assert len(programs) == 4
    env = dict(os.environ, PYTHONPATH=ROOT, MGE_FUZZ_PICKLES=str(tmp_path), MGE_FUZZ_WRITER="1")
    theirs = be.upstream_results(sys.executable, programs, um.PRELUDE, cwd=ROOT, env=env)
    written = sorted(os.listdir(tmp_path))
    assert len(written) >= 4
    monkeypatch.setenv("MGE_FUZZ_PICKLES", str(tmp_path))
    monkeypatch.delenv("MGE_FUZZ_WRITER", raising=False)
    mine = be.run_all(programs, um.PRELUDE)
    assert sorted(os.listdir(tmp_path)) == written  # (read, not written, here)
    assert [[r[:2] for r in rs] for rs in theirs] == [[r[:2] for r in rs] for rs in mine]
