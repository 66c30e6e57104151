"""CI's slice of tests/fuzz/upstream_modules.py: this checkout against upstream MegEngine 1.13's
recorded results of 300 drawn module-tree programs (tests/fuzz/upstream_modules.json, written
by ``python -m tests.fuzz.upstream_modules --upstream PYTHON --seeds 300 --record FILE``:
upstream itself is not installed in CI), and the comparison on planted differences and across
processes."""
import os
import sys

import pytest

from devices import host_default_device  # noqa: F401  (the fixture below)
from tests.fuzz import upstream_modules as um

# (quantize_qat's programs convert the trees: quantized tensors live on CPU devices only)
pytestmark = pytest.mark.usefixtures("host_default_device")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORD = os.path.join(ROOT, "tests", "fuzz", "upstream_modules.json")


def test_this_checkout_gives_upstreams_recorded_results():
    # found with it before: quantize() and quantize_qat() gave the new layers the mode of the
    # layers they replaced (upstream's start in training mode), a QAT LinearBn1d shared the
    # float layer's unused bias: 11 programs of these 300 differed
    seeds, programs, theirs = um.load_record(RECORD)
    assert len(programs) == len(theirs) == 300
    shown = []
    bad, outcomes = um.compare_all(seeds, programs, theirs, show=shown.append)
    assert bad == 0, "\n".join(shown)
    assert outcomes["same"] >= 1800, outcomes


def test_the_record_holds_upstreams_own_differences():
    # upstream's results, not this checkout's: what only upstream refuses (0-d values and
    # float64 arrays given to load_state_dict) and the documented differences are in it
    seeds, programs, theirs = um.load_record(RECORD)
    _, outcomes = um.compare_all(seeds, programs, theirs, show=lambda line: None)
    assert outcomes["upstream raises"] >= 30, outcomes
    assert outcomes["quantize_qat again"] >= 1, outcomes
    assert outcomes["upstream's del of a slice"] >= 1, outcomes


def test_a_changed_generator_asks_for_a_new_record(tmp_path, monkeypatch):
    record = tmp_path / "r.json"
    programs = [um.draw(s) for s in (3, 4)]
    um.save_record(str(record), [3, 4], programs, [um.run(p) for p in programs])
    assert um.load_record(str(record))[1] == programs
    monkeypatch.setattr(um, "NAMES", um.NAMES[::-1])
    with pytest.raises(ValueError, match="record it again"):
        um.load_record(str(record))


def _program(*steps):
    return ("net = Node()", list(steps))


LOAD = "before = None\nsd = {}\nbefore = state()\nout = net.load_state_dict(sd)"


@pytest.mark.parametrize("mine,theirs,finding", [
    ([["ok", None], ["ok", [1, 2]]], [["ok", None], ["ok", [1, 3]]], "step 1: values differ"),
    ([["ok", None], ["raise", "KeyError", "", ["KeyError"]]], [["ok", None], ["ok", 1]],
     "step 1: raises here only"),
    ([["ok", None], ["ok", [1, 2]]], [["ok", None], ["ok", um._digest([1, 3])]],
     "step 1: values differ"),
    # a refused call that changed this fork's state
    ([["ok", None], ["raise", "ValueError", "", ["ValueError"]], ["ok", [[["w", 1.0]], [["w", 2.0]],
                                                                      False]]],
     [["ok", None], ["raise", "ValueError", "", ["ValueError"]], ["ok", [[["w", 1.0]], [["w", 2.0]],
                                                                      False]]],
     "step 2: a refused call changed the state"),
])
def test_findings_are_other_values_and_refusals_upstream_does_not_share(mine, theirs, finding):
    program = _program(LOAD, um.AFTER_LOAD) if len(mine) == 3 else _program("out = 1")
    i, got, _ = um.compare(program, mine, theirs)
    assert got == finding and i == int(finding.split()[1].rstrip(":"))


@pytest.mark.parametrize("mine,theirs,counted", [
    ([["ok", None], ["ok", [1, 2]]], [["ok", None], ["ok", um._digest([1, 2])]], "same"),
    ([["ok", None], ["ok", 1]], [["ok", None], ["raise", "AssertionError", "", []]],
     "upstream raises"),
    ([["ok", None], ["raise", "LoadStateDictError", "", ["LoadStateDictError", "KeyError"]]],
     [["ok", None], ["raise", "KeyError", "", ["KeyError"]]], "both raise"),
    ([["ok", None], ["raise", "ValueError", "", ["ValueError"]]],
     [["ok", None], ["raise", "AssertionError", "", ["AssertionError"]]],
     "both raise (ValueError / AssertionError)"),
])
def test_what_is_counted_not_failed(mine, theirs, counted):
    i, got, counts = um.compare(_program("out = 1"), mine, theirs)
    assert got is None and counts[counted] == 1 + (counted == "same")  # (+ the build)


def test_a_refused_load_keeps_the_state_here_while_upstreams_loaded_part_of_it():
    raised = ["raise", "KeyError", "", ["KeyError"]]
    mine = [["ok", None], raised, ["ok", [[["w", 1.0]], [["w", 1.0]], False]], ["ok", 5]]
    theirs = [["ok", None], raised, ["ok", [[["w", 1.0]], [["w", 2.0]], False]], ["ok", 6]]
    i, got, counts = um.compare(_program(LOAD, um.AFTER_LOAD, "out = 1"), mine, theirs)
    assert got is None and counts["state kept (upstream's partly written)"] == 1


def test_every_program_builds_here_or_refuses_a_non_str_key():
    # (a dict holding a Module or Tensor under an int key: upstream asserts, this fork raises a
    # StructureKeyError, which is an AssertionError and a TypeError)
    with um._QuietLogs():
        results = [um.run(um.draw(s)) for s in range(1000, 1060)]
    builds = [r[0] for r in results]
    assert all(b[0] == "ok" or b[1] == "StructureKeyError" for b in builds), builds
    assert sum(b[0] == "ok" for b in builds) >= 50
    assert sum(len(r) for r in results) >= 300  # the steps ran


def test_the_other_interpreter_runs_this_file_by_path():
    programs = [um.draw(s) for s in (7, 8)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    theirs = um.upstream_results(sys.executable, programs, cwd=ROOT, env=env)
    with um._QuietLogs():
        mine = [um.run(p) for p in programs]
    assert [[r[:2] for r in rs] for rs in theirs] == [[r[:2] for r in rs] for rs in mine]
