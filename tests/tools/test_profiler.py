"""megengine.tools.profiler: a script (or module) run under the Profiler, its own arguments
passed through, the profile holding its ops."""
import json
import sys

import pytest

from megengine.tools import profiler as tool

SCRIPT = """
import sys
import numpy as np
import megengine as mge
import megengine.functional as F
from helper_mod import scale  # from the script's own directory, as `python script.py` finds it

n = int(sys.argv[sys.argv.index("--n") + 1])
x = mge.tensor(np.ones((2, 3), "float32"))
for _ in range(n):
    x = F.relu(x * scale)
RESULT = (sys.argv[1:], float(x.numpy().sum()))
with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
    f.write(repr(RESULT))
"""


@pytest.fixture
def script(tmp_path):
    (tmp_path / "helper_mod.py").write_text("scale = 2.0\n")
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def ops_of(directory):
    (path,) = directory.glob("[0-9]*.chrome_timeline.json")  # not merge.*
    return [e["name"] for e in json.loads(path.read_text())["traceEvents"] if e.get("ph") == "X"]


def test_script_runs_under_the_profiler(script, tmp_path, capsys):
    argv_before, path_before = sys.argv[:], sys.path[:]
    out = tmp_path / "prof"
    # "-o" after the script belongs to the script (upstream's line would give it the profiler)
    tool.main(["-o", str(out), str(script), "--n", "3", "--out", str(tmp_path / "r.txt"),
               "-o", "mine"])
    args, total = eval((tmp_path / "r.txt").read_text())
    assert args == ["--n", "3", "--out", str(tmp_path / "r.txt"), "-o", "mine"]
    assert total == 6 * 8.0  # ones * 2 three times
    ops = ops_of(out)
    assert ops.count("Relu") == 3 and ops.count("Mul") == 3
    assert sys.argv == argv_before and sys.path == path_before
    assert "profile written to" in capsys.readouterr().out


def test_module_mode_and_merge(script, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "prof"
    tool.main(["-m", "-o", str(out), "--merge_trace_events", "train", "--n", "1", "--out",
               str(tmp_path / "r.txt")])
    assert ops_of(out).count("Relu") == 1
    merged = json.loads((out / "merge.chrome_timeline.json").read_text())["traceEvents"]
    assert [e["name"] for e in merged if e.get("ph") == "X"].count("Relu") == 1


def test_errors(tmp_path, capsys):
    for argv, message in (([str(tmp_path / "none.py")], "cannot find the script"),
                          ([], "give the script to profile"),
                          (["-o", str(tmp_path), "--merge_trace_events"],
                           "no <pid>.chrome_timeline.json files")):
        with pytest.raises(SystemExit) as e:
            tool.main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_clean_removes_earlier_profiles_only(script, tmp_path):
    out = tmp_path / "prof"
    out.mkdir()
    (out / "123.chrome_timeline.json").write_text("{}")
    (out / "notes.txt").write_text("kept")
    tool.main(["--clean", "-o", str(out), str(script), "--n", "1", "--out",
               str(tmp_path / "r.txt")])
    assert not (out / "123.chrome_timeline.json").exists() and (out / "notes.txt").exists()
    assert ops_of(out).count("Relu") == 1
