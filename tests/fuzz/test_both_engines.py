"""tests/fuzz/both_engines.py, the runner of the programs both engines run: results, what a
comparison finds and counts, records, and another interpreter that crashes on a program."""
import os
import sys

import pytest

from tests.fuzz import both_engines as be

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRELUDE = "import numpy as np\n"


def _program(*steps):
    return ("x = np.arange(3)", list(steps))


def test_results_are_values_and_errors_and_a_failed_build_ends_the_program():
    got = be.run(_program("out = x.tolist()", "out = x[7]", "out = (1, {'a': np.float32(2)})"),
                 PRELUDE)
    assert got[:2] == [["ok", None], ["ok", [0, 1, 2]]]
    assert got[2][:2] == ["raise", "IndexError"] and "LookupError" in got[2][3]
    assert got[3] == ["ok", [1, [["a", "np.float32(2.0)"]]]]
    assert be.run(("raise KeyError(1)", ["out = 1"]), PRELUDE)[0][1] == "KeyError"
    assert len(be.run(("raise KeyError(1)", ["out = 1"]), PRELUDE)) == 1


OK = ["ok", None]


@pytest.mark.parametrize("mine,theirs,finding", [
    ([OK, ["ok", [1, 2]]], [OK, ["ok", [1, 3]]], "step 1: values differ"),
    ([OK, ["ok", [1, 2]]], [OK, ["ok", be.digest([1, 3])]], "step 1: values differ"),
    ([OK, ["raise", "KeyError", "", ["KeyError"]]], [OK, ["ok", 1]], "step 1: raises here only"),
    ([["raise", "TypeError", "", ["TypeError"]]], [OK], "build: raises here only"),
    # (an `except AssertionError:` written for upstream would miss this side's ValueError)
    ([OK, ["raise", "ValueError", "", ["ValueError", "Exception", "BaseException", "object"]]],
     [OK, ["raise", "AssertionError", "", ["AssertionError"]]],
     "step 1: an error of another type: here ValueError ['Exception'], upstream "
     "AssertionError"),
])
def test_findings_are_other_values_and_refusals_upstream_does_not_share(mine, theirs, finding):
    i, got, _ = be.compare(_program("out = 1"), mine, theirs)
    assert got == finding and i == (0 if finding.startswith("build") else 1)


@pytest.mark.parametrize("mine,theirs,counted", [
    ([OK, ["ok", [1, 2]]], [OK, ["ok", be.digest([1, 2])]], "same"),
    ([OK, ["ok", 1]], [OK, ["raise", "AssertionError", "", []]], "upstream raises"),
    ([OK, ["raise", "LoadStateDictError", "", ["LoadStateDictError", "KeyError"]]],
     [OK, ["raise", "KeyError", "", ["KeyError"]]], "both raise"),
    ([OK, ["raise", "ArgumentError", "", ["ArgumentError", "ValueError", "AssertionError"]]],
     [OK, ["raise", "AssertionError", "", ["AssertionError"]]], "both raise"),
    ([OK, ["raise", "ValueError", "", ["ValueError"]]],  # (upstream's type an accident of its
     [OK, ["raise", "AttributeError", "", ["AttributeError"]]], "both raise"),  # code)
    ([OK, ["raise", "ShapeError", "", ["ShapeError", "RuntimeError"]]],
     [OK, ["raise", "AsyncError", "", ["AsyncError", "RuntimeError"]]], "both raise"),
])
def test_what_is_counted_not_failed(mine, theirs, counted):
    _, got, counts = be.compare(_program("out = 1"), mine, theirs)
    assert got is None and counts[counted] == 1 + (counted == "same")  # (+ the build)


def test_upstream_refusing_ends_the_comparison_and_a_rule_decides_first():
    mine = [OK, ["ok", 1], ["ok", 2]]
    _, got, counts = be.compare(_program("a", "b"), mine, [OK, ["raise", "E", "", []], OK])
    assert got is None and counts["upstream raises"] == 1 and counts["same"] == 1
    seen = []

    def rule(sources, i, mine, theirs):
        seen.append(sources[i])
        return ("stop", "planted") if sources[i] == "a" else None

    _, got, counts = be.compare(_program("a", "b"), mine, [OK, ["ok", 9], ["ok", 9]], rule)
    assert got is None and counts["planted"] == 1 and seen == ["x = np.arange(3)", "a"]
    _, got, _ = be.compare(_program("a"), mine[:2], mine[:2],
                           lambda *a: ("finding", "planted") if a[1] == 1 else None)
    assert got == "step 1: planted"


def test_a_record_holds_digests_and_asks_for_a_new_one_when_the_programs_change(tmp_path):
    record = str(tmp_path / "r.json")
    programs = [_program("out = x.sum()"), _program("out = 1", "out = 2")]
    results = be.run_all(programs, PRELUDE)
    be.save_record(record, [3, 4], programs, results, keep=lambda s: s == "out = 2")
    seeds, again, theirs = be.load_record(record, lambda s: programs[s - 3], "cmd")
    assert seeds == [3, 4] and again == programs
    assert theirs[1][2] == ["ok", 2] and theirs[1][1][1].startswith("#sha1:")
    assert all(be.compare(p, be.run(p, PRELUDE), t)[1] is None for p, t in zip(programs, theirs))
    with pytest.raises(ValueError, match="record it again"):
        be.load_record(record, lambda s: _program("out = 3"), "cmd")


def test_the_other_interpreter_runs_the_file_by_path_and_a_crash_loses_one_program():
    programs = [_program("out = x.tolist()"), ("import os\nos._exit(3)", []),
                _program("out = 5")]
    env = dict(os.environ, PYTHONPATH=ROOT)
    got = be.upstream_results(sys.executable, programs, PRELUDE, cwd=ROOT, env=env)
    assert got[0] == [OK, ["ok", [0, 1, 2]]]
    assert got[1] == [["raise", "crash", "exit status 3", ["crash"]]]
    assert got[2] == [OK, ["ok", 5]]


def test_numbers_agree_within_a_tolerance_where_one_is_given():
    assert be.close([1.0, [2.0, "a"]], [1.00001, [2.0, "a"]], (1e-4, 0))
    assert not be.close([1.0, [2.0, "a"]], [1.0, [2.0, "b"]], (1e-4, 0))
    assert not be.close([1.0], [1.001], (1e-4, 0)) and not be.close([1.0], [1.0, 2.0], (1, 1))
    assert not be.close(True, 1, (1, 1)) and be.close(None, None, (0, 0))
    assert be.same(["ok", [0.0]], ["ok", [1e-7]], (0, 1e-6)) and not be.same(["ok", [0.0]],
                                                                               ["ok", [1e-7]])


def test_a_program_past_its_time_raises_there_and_the_run_goes_on():
    # (the alarm's default action ended the whole fuzzing process, its report unwritten)
    import signal
    import time

    slow = ("pass", ["out = 1", "import time\nwhile True:\n    time.sleep(0.01)", "out = 2"])
    handler, start = signal.getsignal(signal.SIGALRM), time.time()
    got = be.run(slow, "", seconds=1)
    assert time.time() - start < 5
    assert got[:2] == [OK, ["ok", 1]] and got[2][:2] == ["raise", "Timeout"] and len(got) == 3
    assert signal.getsignal(signal.SIGALRM) is handler
    assert be.run(_program("out = 5"), PRELUDE) == [OK, ["ok", 5]]
