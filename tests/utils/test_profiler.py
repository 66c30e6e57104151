"""megengine.utils.profiler: every op the dispatcher runs (forward, backward, traced replays)
lands in a Chrome trace file of upstream's layout; memory_flow.svg draws the ops' arrays over
their lifetimes and addresses (checked against a known program and hand-placed blocks);
nothing is hooked once the profiler stops."""
import json
import os
import threading
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import GradManager
from megengine.core import dispatch
from megengine.jit import trace
from megengine.utils.profiler import Profiler, is_profiling, merge_trace_events, profile, scope


def load(profiler):
    with open(os.path.join(profiler.directory, f"{os.getpid()}.chrome_timeline.json")) as f:
        content = json.load(f)
    assert isinstance(content, dict) and "traceEvents" in content
    return content["traceEvents"]


def ops(events, cat="op"):
    return [e for e in events if e.get("ph") == "X" and e["cat"] == cat]


class Simple(M.Module):
    def __init__(self):
        super().__init__()
        self.a = mge.Parameter([1.23], dtype="float32")

    def forward(self, x):
        return x * self.a


def test_forward_and_backward_ops_in_chrome_trace(tmp_path):
    w = mge.Parameter(np.ones((3,), np.float32))
    x = mge.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    gm = GradManager().attach([w])
    profiler = Profiler(str(tmp_path))
    with profiler:
        assert is_profiling()
        with gm:
            y = F.relu(x * w).sum()
            gm.backward(y)
    assert not is_profiling() and dispatch._profile_hook is None
    np.testing.assert_allclose(w.grad.numpy(), [3, 5, 7])  # profiling changed no result
    assert profiler.path == os.path.join(str(tmp_path), f"{os.getpid()}.chrome_timeline.json")
    events = load(profiler)
    assert events[0]["name"] == "Metadata" and "localTime" in events[0]["args"]
    forward = ops(events)
    assert [e["name"] for e in forward] == ["Mul", "Relu", "Reduce"]
    assert forward[0]["args"]["inputs"] == [[2, 3], [3]]
    assert forward[0]["args"]["outputs"] == [[2, 3]]
    assert forward[0]["args"]["device"] == x._device  # the engine's device name ("cpu0")
    assert forward[2]["args"]["params"] == {"mode": "sum", "keepdims": False}
    # the backward runs in reverse order, after the forward
    backward = ops(events, "backward")
    assert [e["name"] for e in backward] == ["ReduceBackward", "ReluBackward", "MulBackward"]
    timeline = forward + backward
    for a, b in zip(timeline, timeline[1:]):  # one thread: spans follow each other
        assert a["dur"] >= 0 and a["ts"] + a["dur"] <= b["ts"] + 1e-3
    assert all(e["tid"] == threading.get_ident() for e in timeline)
    names = [e for e in events if e["name"] == "thread_name"]
    assert names and names[0]["args"]["name"] == threading.current_thread().name


def test_every_applied_op_is_recorded(tmp_path):
    # oracle: Python's own profiler sees each op's forward called from dispatch.apply
    import sys

    seen = []

    def watch(frame, event, arg):
        if (event == "call" and frame.f_code.co_name == "forward"
                and frame.f_back is not None and frame.f_back.f_code in (
                    dispatch.apply.__code__, dispatch.apply_unhooked.__code__,
                    dispatch._forward_on.__code__)):  # (with several GPUs: their switch)
            seen.append(type(frame.f_locals["self"]).__name__.lstrip("_"))

    x = mge.tensor(np.random.rand(4, 5).astype("float32"))
    net = M.Sequential(M.Linear(5, 3), M.ReLU(), M.Linear(3, 2))
    profiler = Profiler(str(tmp_path))
    with profiler:
        sys.setprofile(watch)
        try:
            net(x)
        finally:
            sys.setprofile(None)
    assert len(seen) == 3  # each Linear is one op
    assert [e["name"] for e in ops(profiler.trace_events())] == seen


def test_scope_marks_a_span(tmp_path):
    profiler = Profiler(str(tmp_path))
    with profiler:
        with scope("my_scope"):
            out = Simple()(mge.tensor([1.23], dtype="float32"))
    np.testing.assert_allclose(out.numpy(), [1.23 * 1.23], rtol=1e-6)
    events = load(profiler)
    marks = [e for e in events if e["name"] == "my_scope"]
    assert [m["ph"] for m in marks] == ["B", "E"]
    (mul,) = ops(events)
    assert marks[0]["ts"] <= mul["ts"] and mul["ts"] + mul["dur"] <= marks[1]["ts"] + 1e-3
    with scope("unprofiled"):  # no profiler: nothing to do, nothing fails
        pass


def test_step_marks_each_steps_end(tmp_path):
    # upstream's Profiler.step(): a step boundary on the timeline, only while recording
    profiler = Profiler(str(tmp_path))
    x = mge.tensor(np.ones(3, "float32"))
    with profiler:
        for _ in range(2):
            F.exp(x)
            assert profiler.step() is profiler
    events = load(profiler)
    steps = [e for e in events if e.get("cat") == "step"]
    assert [e["name"] for e in steps] == ["step 1", "step 2"]
    assert all(e["ph"] == "i" for e in steps)
    first, second = ops(events)  # the two exps, one a step
    assert first["ts"] <= steps[0]["ts"] <= second["ts"] <= steps[1]["ts"]
    with pytest.raises(RuntimeError, match="not recording"):
        profiler.step()
    with profiler:  # a new recording counts from 1 again
        profiler.step()
    assert [e["name"] for e in load(profiler) if e.get("cat") == "step"] == ["step 1"]


@pytest.mark.parametrize("options", [{"without_host": True}, {"symbolic": True},
                                     {"symbolic": False}, None],
                         ids=["replayed", "symbolic", "checked", "eager"])
def test_traced_functions_are_profiled(tmp_path, options):
    net = Simple()

    def infer(x):
        with scope("my_scope"):
            return net(x) + 1

    if options is not None:
        infer = trace(**options)(infer)
    x = mge.tensor([2.0], dtype="float32")
    infer(x)  # first call records the trace
    profiler = Profiler(str(tmp_path))
    with profiler:
        out = infer(x)  # a replay (without_host), a checked run (symbolic), or a plain call
    np.testing.assert_allclose(out.numpy(), [2 * 1.23 + 1], rtol=1e-6)
    events = load(profiler)
    assert [e["name"] for e in ops(events)] == ["Mul", "Add"]
    scope_count = sum(e["name"] == "my_scope" for e in events)
    replayed = options is not None and options.get("without_host")
    assert scope_count == (0 if replayed else 2)  # a replay does not run the Python function


def test_decorator_forms_and_alias(tmp_path):
    prof = Profiler(str(tmp_path / "a"))

    @prof
    def step(x):
        return x * 2

    assert step.__profiler__ is prof
    step(mge.tensor([1.0]))
    assert [e["name"] for e in ops(load(prof))] == ["Mul"]

    assert isinstance(profile(str(tmp_path / "b")), Profiler)

    @profile
    def bare(x):
        return x + 1

    assert isinstance(bare.__profiler__, Profiler)


def test_only_the_latest_recording_is_kept_and_errors_unhook(tmp_path):
    profiler = Profiler(str(tmp_path))
    with profiler:
        mge.tensor([1.0]) * 2
    with profiler:
        mge.tensor([1.0]) + 2
    assert [e["name"] for e in ops(load(profiler))] == ["Add"]
    with pytest.raises(ZeroDivisionError):
        with profiler:
            1 / 0
    assert dispatch._profile_hook is None and not is_profiling()


def test_argument_checks(tmp_path):
    with pytest.raises(TypeError, match="unknown arguments"):
        Profiler(str(tmp_path), colour=True)
    with pytest.raises(ValueError, match="unsupported format") as error:
        Profiler(str(tmp_path), format="trace.txt")
    assert isinstance(error.value, AssertionError)  # upstream 1.13 asserts (measured)
    with pytest.raises(TypeError, match="path must be a directory's path"):
        Profiler(3)
    with pytest.raises(TypeError, match="list"):
        Profiler(str(tmp_path), formats="chrome_timeline.json")
    both = Profiler(str(tmp_path), formats=["chrome_timeline.json", "memory_flow.svg"])
    assert both.formats == ["chrome_timeline.json", "memory_flow.svg"]
    quiet = Profiler(str(tmp_path), sample_rate=3, num_tensor_watch=1, enable_cupti=1,
                     profile_device=0, with_backtrace=True)
    assert quiet.formats == ["chrome_timeline.json"]
    # upstream 1.13 measured: Profiler(path, format, None, True, True) is accepted (the fourth and
    # fifth arguments are with_backtrace and with_scopes)
    assert Profiler(str(tmp_path), "chrome_timeline.json", None, True, True).formats == \
        ["chrome_timeline.json"]
    with Profiler(str(tmp_path)):
        with pytest.raises(RuntimeError, match="do not nest"):
            Profiler(str(tmp_path)).start()
    with pytest.raises(RuntimeError, match="not running"):
        Profiler(str(tmp_path)).stop()


def test_merge_trace_events(tmp_path):
    def write(pid, local_time, ts):
        events = [{"name": "Metadata", "ph": "M", "pid": pid, "tid": 0,
                   "args": {"localTime": local_time}},
                  {"name": "Mul", "ph": "X", "ts": ts, "dur": 1.0, "pid": pid, "tid": 1}]
        with open(tmp_path / f"{pid}.chrome_timeline.json", "w") as f:
            json.dump({"traceEvents": events}, f)

    write(11, 1000, 5.0)
    write(12, 1500, 5.0)
    path = merge_trace_events(str(tmp_path))
    with open(path) as f:
        merged = json.load(f)["traceEvents"]
    assert sorted((e["pid"], e["ts"]) for e in merged) == [(11, 5.0), (12, 505.0)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="chrome_timeline"):
        merge_trace_events(str(tmp_path / "empty"))


SVG = "{http://www.w3.org/2000/svg}"


def svg_rects(path):
    root = ET.parse(path).getroot()
    return [(r, r.find(SVG + "title").text) for r in root.iter(SVG + "rect")
            if r.find(SVG + "title") is not None]


def test_memory_flow_svg_follows_the_arrays_of_a_program(tmp_path):
    x = mge.tensor(np.ones(1000, np.float32))
    with Profiler(str(tmp_path), format="memory_flow.svg"):
        y = F.exp(x)  # freed inside the profile
        z = F.log(y)
        del y
        w = F.sqrt(z)  # alive when the profile stops
    svg = tmp_path / f"{os.getpid()}.memory_flow.svg"
    assert svg.exists()
    assert not (tmp_path / f"{os.getpid()}.chrome_timeline.json").exists()  # not asked for
    rects = svg_rects(svg)
    titles = [t for _, t in rects if "(1000,) float32 4000 B" in t]
    assert len(titles) == 3, titles  # exp, log, sqrt: one array each, in order
    assert "alive at stop" not in titles[0]  # y was deleted
    assert "alive at stop" in titles[1] and "alive at stop" in titles[2]
    assert w.shape == (1000,)
    # y's rectangle ends before the profile does, z's reaches its end
    by_title = {t: r for r, t in rects}
    y_rect, z_rect = by_title[titles[0]], by_title[titles[1]]
    y_end = float(y_rect.get("x")) + float(y_rect.get("width"))
    z_end = float(z_rect.get("x")) + float(z_rect.get("width"))
    assert y_end < z_end


def test_memory_flow_layout_by_hand():
    from megengine.utils._memory_flow import render

    # two arrays reusing one address at different times, one far away: the far one is
    # stacked right after the first range (the gap is left out), heights by bytes
    blocks = [
        {"name": "A", "shape": (4,), "dtype": "float32", "nbytes": 300, "addr": 1000,
         "alloc_ns": 0, "free_ns": 500},
        {"name": "B", "shape": (4,), "dtype": "float32", "nbytes": 300, "addr": 1000,
         "alloc_ns": 500, "free_ns": None},
        {"name": "C", "shape": (2,), "dtype": "float32", "nbytes": 100, "addr": 10 ** 12,
         "alloc_ns": 250, "free_ns": 750},
    ]
    root = ET.fromstring(render(blocks, 0, 1000))
    rects = {r.find(SVG + "title").text.split()[0]: {k: float(r.get(k)) for k in
                                                     ("x", "y", "width", "height")}
             for r in root.iter(SVG + "rect") if r.find(SVG + "title") is not None}
    top, height, left, width = 30, 500, 70, 1000  # the plot area
    assert rects["A"]["y"] == rects["B"]["y"] == top
    assert rects["A"]["height"] == pytest.approx(height * 300 / 400)
    assert rects["C"]["y"] == pytest.approx(top + height * 300 / 400)
    assert rects["C"]["height"] == pytest.approx(height * 100 / 400)
    assert rects["A"]["x"] == left and rects["A"]["width"] == pytest.approx(width / 2)
    assert rects["B"]["x"] == pytest.approx(left + width / 2)
    assert rects["B"]["width"] == pytest.approx(width / 2)  # alive: drawn to the end
    assert rects["C"]["x"] == pytest.approx(left + width / 4)


def test_a_file_where_the_results_go_warns_and_the_block_runs(tmp_path, caplog):
    # upstream 1.13 measured: Profiler(<an existing file>) runs its block and warns
    # "<path> is not a directory, cannot write profiling results"
    import logging

    path = tmp_path / "taken"
    path.write_text("mine")
    with caplog.at_level(logging.WARNING):
        with Profiler(str(path), format="chrome_timeline.json"):
            y = (mge.tensor([1.5]) * 2).numpy()
    assert y.tolist() == [3.0] and path.read_text() == "mine"
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} is not a directory, cannot write profiling results"]
