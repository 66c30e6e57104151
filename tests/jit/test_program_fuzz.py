"""CI slice of the jit program fuzzer: a few fixed programs (`tests/fuzz/jit_programs.py`) in
every trace mode against eager (the full runs are offline, ``python -m tests.fuzz.jit``), and
checks that the properties catch what they must."""
import logging

import numpy as np
import pytest

from tests.fuzz import jit_check
from tests.fuzz.jit_check import MODES, JitMismatch, check, check_inference, minimise
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
