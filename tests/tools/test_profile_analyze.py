"""megengine.tools.profile_analyze: tables of a profile, checked against a hand-written trace
(known times) and against the records of a real Profiler run."""
import json

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.tools import profile_analyze as pa
from megengine.utils.profiler import Profiler, scope


def event(name, ts, dur, tid=1, **args):
    return {"name": name, "ph": "X", "ts": ts, "dur": dur, "pid": 7, "tid": tid, "cat": "op",
            "args": dict(args, device="cpu0")}


@pytest.fixture
def known(tmp_path):
    """Six ops with known times (µs): Conv 50 and 30, Relu 5, 7 and 9, Copy 20; the Relus
    and the second Conv inside scope 'head'."""
    events = [{"name": "Metadata", "ph": "M", "pid": 7, "tid": 0, "args": {"localTime": 0}},
              event("Convolution", 0, 50, inputs=[[1, 2, 4, 4], [3, 2, 3, 3]],
                    outputs=[[1, 3, 4, 4]]),
              event("Copy", 60, 20),
              {"name": "head", "ph": "B", "ts": 100, "pid": 7, "tid": 1},
              event("Relu", 100, 5), event("Convolution", 110, 30), event("Relu", 150, 7),
              event("Relu", 160, 9),
              {"name": "head", "ph": "E", "ts": 170, "pid": 7, "tid": 1}]
    path = tmp_path / "7.chrome_timeline.json"
    path.write_text(json.dumps({"traceEvents": events}))
    return str(path)


def test_top_operators_and_summary(known):
    text = pa.main([known, "-t", "2"])
    assert "total device time  0.000121" in text  # 50+20+5+30+7+9 µs
    assert "total host time    0.000169" in text  # from 0 to the last op's end, 169 µs
    records = pa.select(pa.read_profile(known), top=2)
    assert [(r.name, round(r.time * 1e6)) for r in records] == [("Convolution", 50),
                                                               ("head/Convolution", 30)]
    assert "#1" in text and "#2" not in text and "3e-05" in text and "2e-05" not in text
    assert "{1,2,4,4}" in text and "{1,3,4,4}" in text  # the shapes of the first conv
    assert "41.3%" in text  # 50 / 121


def test_filters_aggregation_and_order(known):
    recs = pa.read_profile(known)
    assert [r.name for r in recs] == ["Convolution", "Copy", "head/Relu", "head/Convolution",
                                      "head/Relu", "head/Relu"]
    relus = pa.select(recs, types=["Relu"], top=0, order_by="+time")
    assert [round(r.time * 1e6) for r in relus] == [5, 7, 9]
    assert [r.type for r in pa.select(recs, opr_name="head/", top=0)] == [
        "Convolution", "Relu", "Relu", "Relu"]
    assert [round(r.time * 1e6) for r in pa.select(recs, min_time=8e-6, max_time=4e-5,
                                                    top=0)] == [30, 20, 9]
    per_type = {r.type: (round(r.time * 1e6), r.count)
                for r in pa.select(recs, aggregate_by="type", aggregate="sum", top=0)}
    assert per_type == {"Convolution": (80, 2), "Relu": (21, 3), "Copy": (20, 1)}
    mean = {r.type: round(r.time * 1e6) for r in pa.select(recs, aggregate_by="type",
                                                            aggregate="mean", top=0)}
    assert mean == {"Convolution": 40, "Relu": 7, "Copy": 20}
    (everything,) = pa.select(recs, aggregate="max")
    assert round(everything.time * 1e6) == 50 and everything.count == 6


def test_text_forms(known, capsys):
    text = pa.main([known, "--aggregate-by", "type", "--aggregate", "sum", "-t", "0",
                    "--print-only", "device", "--dump-only-opr"])
    # ids of aggregates number the types in order of first appearance; rows go by time
    assert text.splitlines() == ["0 Convolution Convolution 2", "2 Relu Relu 3",
                                 "1 Copy Copy"]
    text = pa.main([known, "--confluence", "-t", "1"])
    assert "| total device time | 0.000121 |" in text
    assert "| 0 | 5e-05 | 41.3% | ############### |" in text
    text = pa.main([known, "--copy-time", "--print-only", "summary"])
    assert "copy time          tot=2e-05 avg=2e-05" in text
    assert "device self time" not in text


def test_a_real_profile(tmp_path):
    x = mge.tensor(np.random.rand(1, 2, 8, 8).astype("float32"))
    w = mge.tensor(np.random.rand(4, 2, 3, 3).astype("float32"))
    profiler = Profiler(str(tmp_path))
    with profiler:
        with scope("block"):
            for _ in range(3):
                y = F.relu(F.conv2d(x, w))
    y.numpy()
    (path,) = tmp_path.glob("*.chrome_timeline.json")
    events = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("ph") == "X"]
    text = pa.main([str(tmp_path), "-t", "0", "--aggregate-by", "type"])
    recs = pa.select(pa.read_profile(str(path)), aggregate_by="type", top=0)
    want = {}
    for e in events:  # the oracle: the profiler's own records
        want[e["name"]] = want.get(e["name"], 0.0) + e["dur"] * 1e-6
    assert {r.type: r.count for r in recs} == {n: sum(e["name"] == n for e in events)
                                               for n in want}
    for r in recs:
        assert r.time == pytest.approx(want[r.type])
    assert {r.name for r in pa.read_profile(str(path))} >= {"block/Convolution", "block/Relu"}
    assert "Convolution" in text


def test_bad_input(known, tmp_path, capsys):
    (tmp_path / "junk.json").write_text("not json")
    (tmp_path / "empty.json").write_text(json.dumps({"traceEvents": []}))
    cases = [([str(tmp_path / "none.json")], "no such profile file"),
             ([str(tmp_path / "junk.json")], "is not a JSON profile"),
             ([str(tmp_path / "empty.json")], "holds no op events"),
             ([known, "--input-dtype", "float32"], "--input-dtype is not supported"),
             ([known, "--show-host"], "--show-host and --print-only host are not supported"),
             ([known, "--top-end-key", "kern"], "--top-end-key kern is not supported"),
             ([known, "--order-by", "flops"], "the columns are time, count")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            pa.main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err, argv
