"""CI slice of the jit program fuzzer: a few fixed programs (`tests/fuzz/jit_programs.py`) in
every trace mode against eager (the full runs are offline, ``python -m tests.fuzz.jit``), and
checks that the properties catch what they must."""
import copy
import logging

import numpy as np
import pytest

import megengine as mge
from devices import host_default_device  # noqa: F401  (a fixture)
from tests.fuzz import jit_check, jit_programs
from megengine.jit import ShapeGuardError, TraceMismatchError
from tests.fuzz.jit_check import (MODES, JitMismatch, check, check_inference, check_training,
                                  expected, minimise)
from tests.fuzz.jit_programs import Program, draw

# program 1 has a guard (a branch on the batch), 2 is a training step, 18 builds and reshapes by
# shape tensors (Tensor(h.shape), s[0] * s[1]: both bugs the fuzzer found); 1-3 s each in all
# 32 modes
SEEDS = [1, 2, 18]


@pytest.mark.parametrize("seed", SEEDS)
def test_program_in_every_mode_equals_eager(seed):
    report = check(seed)
    assert report and all(report.values())  # (every mode it fits ran calls, nothing skipped)


def test_the_slice_covers_training_and_dumps():
    p1, p2, p18 = (draw(s) for s in SEEDS)
    assert "if h.shape[0] > 1" in p1.source and p2.train and not p18.train
    assert "s = Tensor(h.shape)" in p18.source and "s[0] * s[1]" in p18.source


def _program(step, outputs="h"):
    return Program([step], [], outputs, seed=0, symshape=False, train=False)


_DUMPING = dict(symbolic=True, capture_as_const=True, without_host=False, opt_level=2,
                symbolic_shape=True)


def test_a_wrong_value_is_caught(monkeypatch):
    # a trace whose calls give eager's value plus a little is caught at its first checked call
    real = jit_check.trace

    def off_by_a_bit(fn, **mode):
        t = real(fn, **mode)
        return lambda x: t(x) + 1e-2
    monkeypatch.setattr(jit_check, "trace", off_by_a_bit)
    with pytest.raises(JitMismatch, match=r"\(a\) call 0 .* differs from eager"):
        check_inference(_program("h = h * 2.0"), _DUMPING, np.random.default_rng(0))


def test_a_program_specialised_to_its_traced_shape_is_caught():
    # a dumped program that ignores its guard (a Python branch on the batch) gives a wrong value
    # at batch 1; the check must say so rather than pass
    from megengine.jit import _program as program_module

    p = _program("if h.shape[0] > 1:\n    h = h * 2.0\nelse:\n    h = h - 1.0")
    check_inference(p, _DUMPING, np.random.default_rng(0))  # guarded: passes
    orig = program_module._Program.__init__

    def no_guards(self, *a, **k):
        orig(self, *a, **k)
        self.__dict__["shape_guards"] = _NoGuards()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(program_module._Program, "__init__", no_guards)
        with pytest.raises(JitMismatch, match=r"at \(1, 3, 8, 8\): output 0 differs"):
            check_inference(p, _DUMPING, np.random.default_rng(0))


class _NoGuards(list):
    """A guard list that forgets what is added to it."""

    def append(self, item):
        pass


def test_minimise_drops_the_steps_a_failure_does_not_need(monkeypatch):
    real = jit_check.check_inference

    def fails_on_abs(p, mode, rng):  # a stand-in bug: any program that uses F.abs
        if any("F.abs" in s for s in p.steps):
            raise JitMismatch("stand-in")
        return real(p, mode, rng)
    monkeypatch.setattr(jit_check, "check_inference", fails_on_abs)
    p = Program(["h = h * 2.0", "h = F.abs(h) + 0.25", "h = F.relu(h)"], [], "h, h.mean()",
                seed=0, symshape=False, train=False)
    small = minimise(p, MODES[0])
    assert small.steps == ["h = F.abs(h) + 0.25"] and small.outputs == "h"


def test_command_line(capsys):
    from tests.fuzz.jit import main

    assert main(["--seeds", "1", "--start", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 programs (0 failing)" in out and "'guarded'" in out
    assert logging.getLogger("megengine").level == logging.NOTSET  # (restored for other tests)


# values whose shapes data decides (tests/fuzz/jit_dyn.py), in every mode, called at the traced
# shape with data that changes their sizes (to 0 too): a mask with upstream's rewrites, its size
# in an op, as a Python value and returned; a training step through cond_take and a size-built
# zeros (about 2 s together)
DYN_PROGRAMS = [
    Program(["h = F.relu(h)", "mk = h > 0.3\nv = h[mk]\nv = v * 1 + (v - v)",
             "h = h + v.sum() / («R:v».shape[0] + 1)",
             "k = «P:int(«Q:v».shape[0])»\nh = h + math.log(k + 1) * 0.1"],
            [], "h, «O:v».shape[0]", seed=0, symshape=False, train=False, dyn=True),
    Program(["h = m.l0(h)", "v, ix = F.cond_take(h > 0.3, h)\n"
             "z = F.zeros((«R:v».shape[0], 3)) + 1.0\n"
             "h = h + F.log(z.sum() + 1.0) * 0.1 + F.tanh(v.sum() * 0.1)"],
            [("l0", "M.Conv2d(3, 2, 3, padding=1)")], "h", seed=1, symshape=False, train=True,
            dyn=True),
]


def _outcomes_in_every_mode(p):
    """Program ``p`` checked in every trace mode (training programs: those without
    capture_as_const): the outcome counts summed over the modes."""
    outcomes = {}
    for mode in MODES:
        if p.train and mode["capture_as_const"]:
            continue
        run = check_training if p.train else check_inference
        for k, v in run(p, mode, np.random.default_rng(0)).items():
            outcomes[k] = outcomes.get(k, 0) + v
    return outcomes


@pytest.mark.parametrize("p", DYN_PROGRAMS, ids=["mask", "training"])
def test_data_decided_shapes_in_every_mode(p):
    outcomes = _outcomes_in_every_mode(p)
    # the sizes changed: some calls followed the data, some were refused as documented
    assert outcomes.get("a followed", outcomes.get("steps")) and (
        outcomes.get("a refused") or outcomes.get("refused"))


def test_the_probe_sees_the_uses_of_sizes():
    p = DYN_PROGRAMS[0]
    assert "«" not in p.source and "_py(int(_rq(v).shape[0]))" in p.probe_source
    prog, m = p.build()
    x = np.array([[[[1.0, -1.0], [2.0, 0.1]]]], "float32")
    p.eager(prog, m, x)
    assert prog.probe.seen() == ([2], [(2,)], [(2,)], [(2,)])


def test_expected_outcomes_follow_the_docs():
    base = dict(symbolic=True, capture_as_const=False, opt_level=0)
    same, other_py, other_op = ([3], [(3,)], [(3,)], []), ([4], [(4,)], [(4,)], []), \
        ([3], [(5,)], [(3,)], [])
    checked = dict(base, without_host=False, symbolic_shape=True)
    replay = dict(base, without_host=True, symbolic_shape=True)
    fixed = dict(base, without_host=False, symbolic_shape=False)
    fixed_replay = dict(base, without_host=True, symbolic_shape=False)
    assert expected(checked, same, other_op) == (None, None)  # an op follows the size
    assert expected(checked, same, other_py) == (TraceMismatchError, None)
    assert expected(replay, same, other_py) == (ShapeGuardError, None)
    assert expected(checked, same, other_py, loaded=True) == (ShapeGuardError, None)
    assert expected(fixed, same, other_op) == (TraceMismatchError, None)
    assert expected(fixed_replay, same, same) == (None, TraceMismatchError)
    assert expected(fixed_replay, same, other_op, loaded=True) == (ShapeGuardError,
                                                                   ShapeGuardError)


# program 7120 minimised: layer_norm over the last axis cancels BatchNorm's bias, whose gradient
# is then rounding noise (~1e-6..5e-5, float64: ~1e-15); opt_level=2 rewrites log(exp(h)) to h,
# which rounds differently, and Adam (eps 1e-3) makes each noise a step of up to ~lr: the bias
# drifts from eager's by ~1.5e-4 in 3 steps though no op computes anything wrong
P7120 = Program(["h = m.l0(h)", "h = F.log(F.exp(h))", "h = m.l1(h)",
                 "h = F.layer_norm(h, h.shape[3])"],
                [("l0", "M.Conv2d(3, 3, 3, padding=1)"), ("l1", "M.BatchNorm2d(3)")], "h",
                seed=7120, symshape=False, train=True, dyn=False)
_REWRITING = dict(symbolic=False, capture_as_const=False, without_host=False, opt_level=2,
                  symbolic_shape=True)


def _check_7120():
    return check_training(P7120, _REWRITING, np.random.default_rng([7120, 11]))


# The case's drift is the CPU's rounding (numpy's Adam after opt_level=2's rewrite); on a GPU
# Adam's multi-tensor kernel rounds otherwise and the drift need not come: the CPU it is.
@pytest.mark.usefixtures("host_default_device")
def test_adam_steps_from_rounding_noise_may_drift_but_gradients_must_agree():
    out = _check_7120()
    assert out["steps"] >= 4 and out["drifted"] >= 1  # (the allowance was needed, and held)


def _planted(monkeypatch, change):
    """BatchNorm's backward with ``change`` applied to its gradients inside traced calls only
    (a wrong gradient of one op under trace)."""
    from megengine.functional.normalization import _BatchNorm

    inside = []
    real_trace, real_backward = jit_check.trace, _BatchNorm.backward

    def tracing(fn, **mode):
        t = real_trace(fn, **mode)

        def call(*args):
            inside.append(True)
            try:
                return t(*args)
            finally:
                inside.pop()
        return call

    def backward(self, *grads):
        out = real_backward(self, *grads)
        return change(out) if inside else out
    monkeypatch.setattr(jit_check, "trace", tracing)
    monkeypatch.setattr(_BatchNorm, "backward", backward)


@pytest.mark.usefixtures("host_default_device")  # (the case's CPU rounding: see above)
@pytest.mark.parametrize("plant", ["bias gradient + 0.1", "input gradient * 1.01"])
def test_a_wrong_gradient_under_trace_is_still_caught(monkeypatch, plant):
    # the bias whose true gradient is 0 given a real one (above its layer's rounding level,
    # 1e-3 of the weight's gradients of 0.5..36: not noise, not allowed to drift), and
    # gradients 1% too large for the conv before it: Adam's steps hardly change with a
    # gradient's scale, so only the gradients tell
    if plant.startswith("bias"):
        _planted(monkeypatch, lambda g: (g[0], g[1], g[2] + 0.1) + tuple(g[3:]))
        match = "gradient of l1.bias"
    else:
        _planted(monkeypatch, lambda g: (g[0] * np.float32(1.01),) + tuple(g[1:]))
        match = "gradient of l0"
    with pytest.raises(JitMismatch, match=match):
        _check_7120()


@pytest.mark.parametrize("mode", [_REWRITING, _DUMPING], ids=["checked", "dumped"])
def test_rewrites_where_eager_overflows_are_not_compared(mode):
    # program 90305 minimised: an overflow to inf, then ``v + (v - v)``: eager gives NaN
    # (inf - inf), opt_level's rewrites give 0 for ``v - v`` as upstream's do, so inf
    p = _program("h = F.exp(h * 500.0)\nh = h + (h - h)")
    check_inference(p, mode, np.random.default_rng(0))


def test_values_eager_computes_as_finite_are_still_compared_under_rewrites():
    nan = float("nan")
    jit_check._close([np.array([0.0, 1.0])], [np.array([nan, 1.0])], "x", rewrites=True)
    with pytest.raises(JitMismatch, match="differs from eager"):
        jit_check._close([np.array([0.0, 1.0])], [np.array([nan, 1.0])], "x")
    with pytest.raises(JitMismatch, match="differs from eager"):
        jit_check._close([np.array([nan, 1.0])], [np.array([1.0, 1.0])], "x", rewrites=True)
    with pytest.raises(JitMismatch, match="differs from eager"):
        jit_check._close([np.array([0.0, 2.0])], [np.array([nan, 1.0])], "x", rewrites=True)


def test_a_state_eager_left_nan_is_compared_as_the_outputs_are():
    # program 98899: a state written from F.log(F.exp(h)) overflowed eagerly: NaN equals NaN;
    # under opt_level's rewrites (log(exp(h)) is h) a finite state where eager's is not
    # finite is not compared, and a finite eager value still is
    nan = float("nan")

    def m_of(values):
        m = mge.module.Module()
        m.w = mge.Parameter(np.array(values, np.float32))
        return m

    m_nan, m_mixed = m_of([nan, 2.0]), m_of([3.0, 2.0])
    jit_check._check_state("x", m_nan, {"w": np.array([nan, 2.0], np.float32)})
    jit_check._check_state("x", m_mixed, {"w": np.array([nan, 2.0], np.float32)}, rewrites=True)
    with pytest.raises(JitMismatch, match="parameter w"):
        jit_check._check_state("x", m_mixed, {"w": np.array([nan, 2.0], np.float32)})
    with pytest.raises(JitMismatch, match="parameter w"):
        jit_check._check_state("x", m_mixed, {"w": np.array([nan, 2.5], np.float32)},
                               rewrites=True)


def test_values_are_compared_to_the_rounding_of_the_outputs_magnitude():
    # program 97763 (opt_level 2): -0.0435505 for eager's -0.0435801 in an output up to 12.1,
    # a value a centring left of terms of that size
    want = [np.array([12.121447, -0.043580055], np.float32)]
    jit_check._close([np.array([12.121447, -0.04355049], np.float32)], want, "x")
    with pytest.raises(JitMismatch, match="differs from eager"):
        jit_check._close([np.array([12.121447, -0.0432], np.float32)], want, "x")
    with pytest.raises(JitMismatch, match="differs from eager"):  # (small outputs: as before)
        jit_check._close([np.array([0.5, -0.04355049], np.float32)],
                         [np.array([0.5, -0.043580055], np.float32)], "x")


# program 92119 minimised: log(exp(h)) overflows to inf eagerly for all-negative data, the
# softmax of it is NaN and the mask of it empty, so eager's branch on the mask's size is not the
# one the trace recorded; opt_level=2 computes h (upstream's log(exp(a)) -> a rewrite) and its
# mask keeps the recorded size: following it is no finding, as comparing values is none there
P92119 = Program(["h = m.l0(h)",
                  "s = h.shape.numpy()\nh = h.reshape(int(s[0]), int(s[1]), -1).sum(2)",
                  "h = F.log(F.exp(h))", "h = F.softmax(h, axis=1)",
                  "mk = h > -0.2\nv = h[mk]\nv = F.relu(v - 0.5)\n"
                  "if «P:«Q:v».shape[0] > 3»:\n    h = h * 1.5\nelse:\n    h = h - 0.5"],
                 [("l0", "M.Conv2d(3, 2, 3, padding=1)")], "h", seed=92119, symshape=True,
                 train=True, dyn=True)


@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
def test_sizes_eager_decides_from_an_overflow_are_not_expected_under_rewrites(train):
    p = copy.copy(P92119)
    p.train = train
    run = check_training if train else check_inference
    out = run(p, _REWRITING, np.random.default_rng([92119, 11]))
    assert out.get("diverged") if train else out.get("a followed")
    # without the rewrites the trace computes the overflow too, and refuses the new size
    out = run(p, dict(_REWRITING, opt_level=0), np.random.default_rng([92119, 11]))
    assert out.get("refused") if train else out.get("a refused")


def test_a_value_where_an_error_is_due_is_caught_unless_eager_overflowed():
    finite, nan = [np.array([1.0, 2.0])], [np.array([np.nan, 2.0])]
    for want in (finite, nan):
        with pytest.raises(JitMismatch, match="expected TraceMismatchError"):
            jit_check._outcome("x", lambda: finite, want, (TraceMismatchError, None), None,
                               rewrites=False)
    with pytest.raises(JitMismatch, match="expected TraceMismatchError"):
        jit_check._outcome("x", lambda: finite, finite, (TraceMismatchError, None), None,
                           rewrites=True)
    assert jit_check._outcome("x", lambda: finite, nan, (TraceMismatchError, None), None,
                              rewrites=True) == "followed"



def test_a_refusal_or_a_count_from_an_overflow_is_no_finding_under_rewrites():
    # programs 96277 and 96215: eager's mask of NaN (log(exp(h)) overflowed) is empty, the
    # rewritten program's is not; so a Python value made from its count differs from the one
    # recorded (a refusal where none was due), or the count it returns differs from eager's
    finite, nan = [np.array([1.0, 2.0])], [np.array([np.nan, 2.0])]

    def refuses():
        raise TraceMismatchError("tensors not equals")
    assert jit_check._outcome("x", refuses, nan, (None, None), None, rewrites=True) == "refused"
    for want, rewrites in ((finite, True), (nan, False)):  # (no overflow, or no rewrites)
        with pytest.raises(JitMismatch, match="TraceMismatchError"):
            jit_check._outcome("x", refuses, want, (None, None), None, rewrites=rewrites)
    jit_check._close([np.array(1.0), np.array(2)], [np.array(np.nan), np.array(0)], "x",
                     rewrites=True)
    for want, rewrites in (([np.array(1.0), np.array(0)], True),
                           ([np.array(np.nan), np.array(0)], False)):
        with pytest.raises(JitMismatch, match="differs from eager"):
            jit_check._close([np.array(1.0), np.array(2)], want, "x", rewrites=rewrites)

# writes (`jit_programs._with_writes`): a captured Parameter read, written with a value computed
# from the input, indexed, with a numpy array and a number, and read again; the argument and a
# computed value written in place and read again; and a training step that writes its argument
_STATE = [jit_programs.STATE_LAYER]
WRITE_PROGRAMS = [
    Program(["h = h + m.w.mean()", "m.w.set_value(m.w * 0.5 + h.mean())", "m.w[1:3] = h.max()",
             "h = h * (1.0 + 0.1 * m.w[2])", "x += 0.5", "h = h + x.mean()",
             "wv = h * 1.0\nwv[:, 0] = np.float32(0.25)\nh = h + wv"],
            _STATE, "h, h.mean()", seed=0, symshape=False, train=False),
    Program(["m.w.set_value(np.array([0.5, -1.0, 2.0, 0.25], 'float32'))", "m.w[...] = 1.5",
             "h = h - m.w[1:3].sum() * 0.5", "x._reset(x * 2.0)", "h *= 0.5"],
            _STATE, "h", seed=1, symshape=False, train=False),
    Program(["h = m.l0(h)", "x[0] = 1.0", "h = h * F.sigmoid(x.max())",
             "wv = F.relu(h)\nwv *= 2.0\nh = h - wv"],
            [("l0", "M.Conv2d(3, 2, 3, padding=1)")], "h", seed=1, symshape=False, train=True),
]


@pytest.mark.parametrize("p", WRITE_PROGRAMS, ids=["state read and written", "state set",
                                                   "training"])
def test_writes_in_every_mode(p):
    outcomes = _outcomes_in_every_mode(p)
    if p.train:
        assert outcomes["steps"] >= 16
        return
    # every call of the 16 modes without capture_as_const follows, the state evolving alike;
    # under capture_as_const a program that reads ``m.w`` before it writes it has its calls
    # after the recording one refused (``m.w`` no longer holds the captured value: checked
    # calls raise TraceMismatchError, without_host recording calls TraceError), one that
    # writes ``m.w`` first follows in every mode; the dumped files' runs start from the
    # captured state
    if p.reads_state_first:
        assert outcomes["a followed"] >= 16 * 3
        assert outcomes["a state refused"] >= 8 and outcomes["a refused"] >= 8
    else:
        assert outcomes["a followed"] >= 32 * 3 and "a refused" not in outcomes
    assert outcomes["loaded ok"] >= 16 * 4


def test_the_drawer_draws_writes():
    progs = [draw(s) for s in range(100)]
    src = "\n".join(p.source for p in progs)
    for write in ("m.w.set_value(", "m.w._reset(", "m.w[", "m.w +=", "m.w *=", "x += ", "x *= ",
                  "x[0] = ", "x.set_value(", "x._reset(", "wv[", "wv.set_value(", "np.array(",
                  "np.float32("):
        assert write in src, write
    assert any(p.writes_state for p in progs) and not all(p.writes_state for p in progs)
    # the draws without writes are those of before writes were drawn (their own stream)
    p = draw(18, writes=False)
    assert not any(w in p.source for w in ("x += ", "wv", "m.w"))
    assert "s = Tensor(h.shape)" in p.source


def test_the_drawer_draws_sorts_into_programs_it_otherwise_keeps():
    from tests.fuzz.jit_programs import SORTS

    progs = [draw(s, layer_fns=False) for s in range(60)]
    drawn = [[st for st in p.steps if st in SORTS] for p in progs]
    assert {st for d in drawn for st in d} == set(SORTS)
    assert 10 < sum(map(bool, drawn)) < 40  # (a third of the programs)
    for seed, p, d in zip(range(60), progs, drawn):
        # the other steps, as drawn without sorts (their own stream)
        assert [st for st in p.steps if st not in d] == \
            draw(seed, sorts=False, layer_fns=False).steps


def test_the_drawer_draws_layer_functions_into_programs_it_otherwise_keeps():
    from tests.fuzz.jit_programs import LAYER_FNS

    progs = [draw(s) for s in range(800)]
    drawn = [[st for st in p.steps if st in LAYER_FNS] for p in progs]
    assert {st for d in drawn for st in d} == set(LAYER_FNS)
    assert 240 < sum(map(bool, drawn)) < 400  # (two fifths of the programs)
    for seed, p, d in zip(range(800), progs, drawn):
        # the other steps, as drawn without them (their own stream)
        assert [st for st in p.steps if st not in d] == draw(seed, layer_fns=False).steps


def test_a_trace_that_loses_a_write_is_caught(monkeypatch):
    # traced calls whose write into the captured Parameter does not stay (undone after each
    # call) give eager's value at the first call and a stale state after it: caught there
    real = jit_check.trace

    def tracing(fn, **mode):
        t = real(fn, **mode)
        m = next(c.cell_contents for c in fn.__closure__ if hasattr(c.cell_contents, "w"))

        def call(*args):
            before = m.w.numpy()
            out = t(*args)
            m.w._reset(mge.tensor(before))
            return out
        return call
    monkeypatch.setattr(jit_check, "trace", tracing)
    with pytest.raises(JitMismatch, match=r"\(a\) call 0 .*: parameter w is"):
        check_inference(WRITE_PROGRAMS[0], _REWRITING, np.random.default_rng(0))


def test_a_file_that_keeps_the_state_of_a_run_is_caught(monkeypatch):
    # a loaded program whose runs start from the state the previous run left (as a live trace
    # does) differs from eager code on the state the trace captured from its second run on
    real = jit_check.GraphInference

    class Stateful:
        def __init__(self, f):
            self.net, self.runs = real(f), 0

        def run(self, a):
            self.runs += 1
            out = self.net.run(a)
            return {k: v * (1.0 + 0.01 * (self.runs > 1)) for k, v in out.items()}
    monkeypatch.setattr(jit_check, "GraphInference", Stateful)
    with pytest.raises(JitMismatch, match=r"\(c\) GraphInference .* differs from eager"):
        check_inference(WRITE_PROGRAMS[0], _DUMPING, np.random.default_rng(0))


def test_minimise_keeps_the_state_parameter(monkeypatch):
    real = jit_check.check_inference

    def fails_on_set_value(p, mode, rng):  # a stand-in bug: any program that sets m.w
        if any("m.w.set_value" in s for s in p.steps):
            raise JitMismatch("stand-in")
        return real(p, mode, rng)
    monkeypatch.setattr(jit_check, "check_inference", fails_on_set_value)
    small = minimise(WRITE_PROGRAMS[0], MODES[0])
    assert small.steps == ["m.w.set_value(m.w * 0.5 + h.mean())"] and small.layers == _STATE


@pytest.mark.parametrize("p, refuses", [(WRITE_PROGRAMS[0], False), (WRITE_PROGRAMS[1], True)],
                         ids=["reads first, never refused", "writes first, refused"])
def test_a_trace_that_refuses_the_state_where_it_must_not_or_not_where_it_must_is_caught(
        monkeypatch, p, refuses):
    # the state decides exactly where a capture_as_const call is refused (`reads_capture`): a
    # program that writes m.w first must follow on every call, one that reads it first must
    # be refused once m.w changed since its program recorded
    real = jit_check.trace

    def tracing(fn, **mode):
        t = real(fn, **mode)
        calls = [0]

        def call(*args):
            calls[0] += 1
            if refuses and calls[0] == 2:
                raise TraceMismatchError("a refusal no capture asks for", "tensors not equals")
            if not refuses:
                return fn(*args)  # (a trace that never compares the capture)
            return t(*args)
        return call
    monkeypatch.setattr(jit_check, "trace", tracing)
    mode = dict(_REWRITING, capture_as_const=True, without_host=False)
    with pytest.raises(JitMismatch, match="expected TraceMismatchError" if not refuses else
                       r"\(a\) call 1 .*TraceMismatchError"):
        check_inference(p, mode, np.random.default_rng(0))


def test_a_step_the_generator_drops_leaves_its_state_as_it_was():
    # program 91814: a concat drawn past the 48-channel cap was dropped, but its doubled channel
    # count stayed, and a later convolution was drawn for 96 channels of 48 (invalid eagerly)
    p = draw(91814)
    mode = dict(symbolic=False, capture_as_const=False, without_host=False, opt_level=0,
                symbolic_shape=True)
    assert check_inference(p, mode, np.random.default_rng([p.seed, 11]))
