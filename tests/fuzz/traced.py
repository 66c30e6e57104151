"""Offline fuzzing of ``megengine.traced_module``: ``python -m tests.fuzz.traced --seeds 300
[--start S]`` turns each program the jit fuzzer draws (`jit_programs`: layers, shape-dependent
Python, in-place writes into the input, into computed values and into a module's state, values
whose shapes data decides, training steps) into a Module whose ``forward`` runs it, traces it
with ``trace_module`` and checks the traced module against a twin of the Module (the same seed,
the same weights) run eagerly, the oracle:

* inference: the outputs on the traced input and on other values of its shape (only the traced
  input where shapes depend on data: a Python branch on such a size is frozen by tracing, as
  upstream's), and then the copies users make of a traced module, each from a copy of it, so
  that state written in place stays in step, called twice (a write the first call leaves,
  the second reads): ``pickle``, ``mge.save``/``mge.load``, ``flatten()`` and ``optimize``
  with each pass (2e-4: folded weights round differently), and the traced module itself again
  afterwards;
* deployed (programs without state the program writes or shapes data decides): ``jit.trace``
  of the traced module on other values, and its ``dump`` run by ``GraphInference`` (a dump
  refused with DumpError, a size read to the host, is counted as "dump refused");
* training: three SGD steps under a GradManager (one where shapes depend on data): outputs,
  every parameter's gradient and the state dict (batch-norm statistics) after each.

The twin runs once first for the tracing call, which wrote the state as a call does. Programs
whose code reads ``x.shape.numpy()`` run under symbolic shapes, traced and eager; a program that
``trace_module`` refuses with a TypeError or ValueError (a size tensor where an int is taken:
``F.roll(h, h.shape[3] // 2)``, which upstream refuses too) is counted as refused. Where
shapes depend on data, a difference is no failure when the twin's Python read such a size
(``int(v.shape[0])``, a branch on it: the program's probe copy logs them) with another value
than at the tracing call, which froze it ("diverged": the state the program writes changed
the mask); in any program, a difference of the traced module itself is none where a graph
computes a float from sizes alone ("float sizes": a traced size is an int32 tensor, as
upstream's, so ``h.shape[1] ** 2 * 0.01`` is float32 arithmetic where the twin's is on Python
numbers, one float32 step apart, which a mask may amplify). A failure prints the program (paste it into a test). Not run in
CI beyond tests/fuzz/test_traced_fuzz.py's slice. Run it from the repository root with the
checkout on PYTHONPATH."""
import copy
import io
import logging
import pickle
import sys

import numpy as np

import megengine as mge
import megengine.module as M
from megengine.autodiff import GradManager
from megengine.core._trace_option import set_symbolic_shape
from megengine.traced_module import optimize, trace_module

from .gen import flat, run_seeds, seeds_main
from .jit_programs import TRACE_SHAPE, draw

PASSES = (["FuseConvBn"], ["FuseAddMul"], ["BackwardFoldScale"],
          ["FuseConvBn", "FuseAddMul", "BackwardFoldScale"])


class TracedMismatch(AssertionError):
    """A traced module (or a copy of it) computed other values than its eager twin."""


def _module(program, probe=False):
    """A Module whose forward runs ``program``; ``probe``: the program's probe copy, which logs
    the Python values it makes from sizes that data decides (`jit_dyn.Probe`), one list per
    call in ``module.sizes_seen``."""
    prog, m = program.build()
    run = prog.eager if probe else prog

    class Program(M.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            if probe:
                prog.probe.reset()
            out = run(x, self.m)
            if probe:
                sizes_seen.append(list(prog.probe.P))
            return out

    net = Program()
    sizes_seen = net.sizes_seen = []
    if not program.train:
        net.eval()
    return net


def _flat(out):
    return [np.asarray(o.numpy() if isinstance(o, mge.Tensor) else o) for o in flat(out)]


def _compare(got, want, what, tol=1e-5):
    got, want = _flat(got), _flat(want)
    if len(got) != len(want):
        raise TracedMismatch(f"{what}: {len(got)} outputs, eager {len(want)}")
    for i, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            raise TracedMismatch(f"{what}: output {i} of shape {a.shape}, eager {b.shape}")
        if not np.allclose(a, b, rtol=tol, atol=tol, equal_nan=True):
            diff = np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)))
            raise TracedMismatch(f"{what}: output {i} differs from eager's by {diff:.3g}")


def _saved(tm):
    buf = io.BytesIO()
    mge.save(tm, buf)
    buf.seek(0)
    return mge.load(buf)


COPIES = {"pickle": lambda tm: pickle.loads(pickle.dumps(tm)), "mge.save": _saved,
          "flatten": lambda tm: tm.flatten()}


def _deployed(tm, twin, inputs):
    """The deployment path of a traced module without state: ``jit.trace`` of it (symbolic,
    constants captured) on another input, then its ``dump`` run by ``GraphInference``. A dump
    refused with DumpError (a size the forward read to the host: ``math.floor(h.shape[2] *
    1.5)`` given to interpolate) is counted."""
    from megengine.jit import trace
    from megengine.jit.dump_format import DumpError
    from megengine.utils.comp_graph_tools import GraphInference

    x, other = inputs
    module = copy.deepcopy(tm)
    traced = trace(lambda a: module(a), symbolic=True, capture_as_const=True)
    traced(x())
    want = twin(other())
    _compare(traced(other()), want, "jit.trace of the traced module")
    buf = io.BytesIO()
    try:
        traced.dump(buf, arg_names=["x"])
    except DumpError:
        return "dump refused"
    outs = list(GraphInference(io.BytesIO(buf.getvalue())).run(inputs[1]().numpy()).values())
    _compare(outs, want, "its dump run by GraphInference")
    return "ok"


def _call_both(module, eager, make_input, what, tol=1e-5):
    """Call ``module`` and then ``eager`` on fresh copies of one input and compare. The same
    error from both is agreement: a program that writes its state may reach values where its
    own code raises on a later call (seed 6905: state grown to NaN, then a mask that keeps no
    channel, and the max of none)."""
    results = []
    for side in (module, eager):
        try:
            results.append((True, side(make_input())))
        except Exception as e:  # noqa: BLE001  (an error is a result to compare)
            results.append((False, f"{type(e).__name__}: {e}"))
    (ok_got, got), (ok_want, want) = results
    if ok_got and ok_want:
        _compare(got, want, what, tol)
    elif ok_got or ok_want or got != want:
        raise TracedMismatch(f"{what}: {'the traced module' if not ok_got else 'eager'} raised "
                             f"{got if not ok_got else want}"
                             + (f"; the other {want}" if not ok_want and not ok_got else ""))


def _inference(tm, twin, inputs, dyn):
    x, other = inputs
    _compare(tm(x()), twin(x()), "the traced module")
    probe = x if dyn else other  # (shapes that data decides: the traced input only)
    if not dyn:
        _call_both(tm, twin, other, "the traced module on other values")
    made = [(name, make, 1e-5) for name, make in COPIES.items()] + \
        [(f"optimize {passes}", lambda t, p=passes: optimize(t, p), 2e-4) for passes in PASSES]
    for what, make, tol in made:  # (two calls each: a write the first leaves, the second reads)
        module, eager = make(copy.deepcopy(tm)), copy.deepcopy(twin)
        for call in (1, 2):
            _call_both(module, eager, probe, f"{what}, call {call}", tol)
    _call_both(tm, twin, probe, "the traced module after its copies")


def _training(tm, twin, inputs, dyn):
    # (shapes that data decides: one step on the traced input, since a step's update changes
    # them as other inputs do)
    for step, x in enumerate(inputs[:1] if dyn else inputs + inputs[:1]):
        results = []
        for module in (twin, tm):
            params = list(module.parameters())
            gm = GradManager().attach(params)
            with gm:
                out = module(x())
                gm.backward((out * out).mean())
            grads = [None if p.grad is None else p.grad.numpy() for p in params]
            state = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                     for k, v in module.state_dict().items()}
            for p in params:
                if p.grad is not None:
                    p._reset(p - 0.01 * p.grad)
                    p.grad = None
            results.append((out, grads, state))
        (want, want_grads, want_state), (got, grads, state) = results
        _compare(got, want, f"training step {step}", 1e-4)
        if len(grads) != len(want_grads):
            raise TracedMismatch(f"step {step}: {len(grads)} parameters, eager {len(want_grads)}")
        for i, (a, b) in enumerate(zip(grads, want_grads)):
            if (a is None) != (b is None) or a is not None and not np.allclose(
                    a, b, rtol=1e-4, atol=1e-5, equal_nan=True):
                raise TracedMismatch(f"step {step}: parameter {i}'s gradient differs")
        if sorted(state) != sorted(want_state):
            raise TracedMismatch(f"state dict keys {sorted(state)}, eager {sorted(want_state)}")
        for k in want_state:
            if not np.allclose(state[k], want_state[k], rtol=1e-4, atol=1e-5, equal_nan=True):
                raise TracedMismatch(f"step {step}: state {k} differs")


def _float_sizes(tm):
    """Whether a graph of ``tm`` computes a float from sizes alone (``h.shape[1] ** 2 * 0.01``):
    a traced size is an int32 tensor, as upstream's, so that arithmetic is float32 where the
    eager module's is on Python numbers (589824 * 0.01 one float32 step apart), and the masks
    and sums after it may amplify the step."""
    from megengine.traced_module.expr import Constant, GetAttr, ShapeOf
    from megengine.traced_module.node import TensorNode

    for graph in _passes_graphs(tm):
        sizes = set()
        for expr in graph._exprs:
            tensors = [n for n in expr.inputs if isinstance(n, TensorNode)]
            if isinstance(expr, ShapeOf) or tensors and not isinstance(expr, (Constant, GetAttr)) \
                    and all(n in sizes for n in tensors):
                for n in expr.outputs:
                    if not isinstance(n, TensorNode):
                        continue
                    if n.dtype is not None and np.dtype(n.dtype).kind == "f":
                        return True
                    sizes.add(n)
    return False


def _passes_graphs(tm):
    from megengine.traced_module._passes import _graphs

    return _graphs(tm)


def check(seed):
    """Check program ``seed`` (`jit_programs.draw`); returns its outcome ("ok", "refused",
    "diverged", "float sizes", "dump refused") or raises TracedMismatch."""
    program = draw(seed)
    if program.symshape:  # (its code reads x.shape.numpy(): the twin and the trace alike)
        old = set_symbolic_shape(True)
        try:
            return _check(seed, program)
        finally:
            set_symbolic_shape(old)
    return _check(seed, program)


def _check(seed, program):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(TRACE_SHAPE).astype(np.float32) for _ in range(2)]
    inputs = [lambda a=a: mge.Tensor(a) for a in arrays]  # (fresh: programs write into x)
    net, twin = _module(program), _module(program, probe=True)
    try:
        tm = trace_module(net, inputs[0]())
    except (TypeError, ValueError):
        return "refused"
    twin(inputs[0]())  # the tracing call's writes (state, batch-norm statistics)
    try:
        if program.train:
            _training(tm, twin, inputs, program.dyn)
        else:
            _inference(tm, twin, inputs, program.dyn)
            if not (program.dyn or program.writes_state or program.symshape):
                outcome = _deployed(tm, twin, inputs)
                if outcome != "ok":
                    return outcome
    except TracedMismatch as e:
        if program.dyn and any(seen != twin.sizes_seen[0] for seen in twin.sizes_seen):
            # Python read a size that data decides (int(v.shape[0]), a branch on it), which
            # tracing froze at its call's value; a later call (state the program writes,
            # another step's weights) made another: the traced module computes another program
            return "diverged"
        if str(e).startswith("the traced module:") and _float_sizes(tm):
            # (amplified by a mask, a size data decides or a softmax over large values, as
            # seed 6646's h + h.shape[1] ** 2 * 0.01; on the first comparison only: a copy's
            # difference where the traced module agreed is no such step)
            return "float sizes"
        raise TracedMismatch(f"program {seed}: {e}\n{program}") from None
    return "ok"


def fuzz(seeds, start=0):
    """Check programs ``start`` .. ``start + seeds - 1``; prints each failure; returns (number
    failing, outcome counts)."""
    return run_seeds(check, seeds, start, TracedMismatch,
                     lambda seed: f"program {seed}:\n{draw(seed)}")


def main(argv=None):
    log = logging.getLogger("megengine")
    level = log.level
    log.setLevel(logging.ERROR)  # (optimize's "BackwardFoldScale requires FuseConvBn")
    try:
        return seeds_main(argv, "python -m tests.fuzz.traced", __doc__, "programs", fuzz)
    finally:
        log.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
