"""CI slice of the traced_module fuzzer (`traced`: the jit fuzzer's programs traced with
``trace_module`` against their eager twins; the full runs are offline, ``python -m
tests.fuzz.traced``), and checks that it catches what it must."""
import functools

import pytest

from megengine.traced_module import _passes

from . import traced
from .traced import TracedMismatch, check

SEEDS = range(40)  # inference and training programs, writes, shapes data decides: ~3 s


@functools.lru_cache(maxsize=None)
def _outcome(seed):
    return check(seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_drawn_programs_trace_like_eager(seed):
    assert _outcome(seed) in ("ok", "refused", "diverged", "float sizes", "dump refused")


def test_the_slice_checks_programs_of_every_kind():
    from .jit_programs import draw

    programs = [draw(seed) for seed in SEEDS]
    checked = [p for p, seed in zip(programs, SEEDS) if _outcome(seed) == "ok"]
    assert len(checked) >= len(programs) // 2
    assert any(p.train for p in checked) and any(not p.train for p in checked)
    assert any(p.dyn for p in checked) and any(p.writes_state for p in checked)
    assert any(p.symshape for p in checked)


def test_a_wrong_pass_is_caught(monkeypatch):
    seed = next(s for s in SEEDS if not traced.draw(s).train and not traced.draw(s).dyn
                and _outcome(s) == "ok")
    real = _passes.fuse_add_mul

    def off_by_a_little(graph, written=None):  # merges, then adds 1e-3 to every output
        real(graph, written)
        for node in graph.outputs:
            with graph.insert_exprs():
                bumped = node + 1e-3
            graph.replace_node({node: bumped})
        graph.compile()

    monkeypatch.setattr(_passes, "fuse_add_mul", off_by_a_little)
    with pytest.raises(TracedMismatch, match="optimize"):
        check(seed)


def test_a_wrong_dump_is_caught(monkeypatch):
    from megengine.utils.comp_graph_tools import GraphInference

    seed = next(s for s in SEEDS if not (traced.draw(s).train or traced.draw(s).dyn
                                         or traced.draw(s).writes_state or traced.draw(s).symshape)
                and _outcome(s) == "ok")
    real = GraphInference.run

    def off(self, *args, **kwargs):  # the loaded program's outputs 1e-3 off
        return {k: v + 1e-3 for k, v in real(self, *args, **kwargs).items()}

    monkeypatch.setattr(GraphInference, "run", off)
    with pytest.raises(TracedMismatch, match="GraphInference"):
        check(seed)


def test_a_wrong_gradient_is_caught(monkeypatch):
    seed = next(s for s in SEEDS if traced.draw(s).train and not traced.draw(s).dyn
                and _outcome(s) == "ok")
    real = traced.trace_module

    def scaled(net, *args):  # the traced module's parameters start 1% off
        tm = real(net, *args)
        for p in tm.parameters():
            p._reset(p * 1.01)
        return tm

    monkeypatch.setattr(traced, "trace_module", scaled)
    with pytest.raises(TracedMismatch, match="training step 0"):
        check(seed)


def test_frozen_sizes_are_told_apart_from_failures():
    # program 354 writes its state, which moves a mask whose size int() reads: the traced
    # module keeps the size of the tracing call; 2013 adds h.shape[1] ** 2 * 0.01 (float32
    # when traced) before a mask
    assert check(354) == "diverged" and check(2013) == "float sizes"


def test_command_line(capsys):
    assert traced.main(["--seeds", "3", "--start", "0"]) == 0
    assert "3 programs (0 failing)" in capsys.readouterr().out
