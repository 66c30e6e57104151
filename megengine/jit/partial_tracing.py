"""`partial_trace`: trace one part of a training step (a module's forward) so that it replays
inside an eager step, its backward included."""
import warnings

from .tracing import trace
from .xla_backend import xla_trace

_warned = set()  # the one-per-process notes about what this engine does differently


def _note_once(key, text):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(text, UserWarning, stacklevel=3)


class _partial_trace(trace):
    """A ``without_host`` trace whose ``capture_as_const`` keeps the tensors of Module and
    Optimizer arguments live, as `xla_trace` does: a partially traced forward
    (``partial_trace(type(model).forward)`` called with the model) reads the parameters it
    trains, which a constant would cut off from their gradients."""

    _live_externals = xla_trace._live_externals


def partial_trace(func=None, *, backend="default", without_host=True, trace_gmcallback=True,
                  **trace_options):
    """Trace ``func`` so that later calls replay its ops without running its Python code, while
    the code around it (the loss, ``gm.backward``, the optimizer) stays eager.

    Upstream records the forward and the backward of ``func`` as two graphs and glues them with
    a custom autodiff function. Here a replay applies every recorded op through the dispatcher,
    so a recording GradManager records them and its backward runs each op's own backward: the
    backward needs no second trace and gradients are those of eager code.

    ``backend``: ``"default"``, or upstream's ``"xla"``, which runs the same way here (no XLA
    in this engine, as `xla_trace`) and says so once per process.
    ``trace_gmcallback``: upstream (1.13) also traces the GradManager callbacks that the
    backward runs, so their Python side effects happen on the first step only. The backward
    here is eager, and so are its callbacks: with either value they run in Python on every
    step, giving the same gradients as upstream's (a callback's counter or print repeats).
    ``without_host`` must be True, as upstream asserts. Other keyword arguments go to `trace`.
    """
    if backend not in ("default", "xla"):
        raise ValueError(f"partial_trace: unknown backend {backend!r}; upstream's are "
                         "'default' and 'xla'")
    if backend == "xla":
        _note_once("xla", "megengine.jit.partial_trace(backend='xla'): XLA is not used in this "
                   "build; the function is traced and replayed op by op on numpy/CuPy, as "
                   "backend='default'")
    if trace_gmcallback is not True and trace_gmcallback is not False:
        raise TypeError(f"partial_trace: trace_gmcallback must be True or False, got "
                        f"{trace_gmcallback!r}")
    assert without_host, "partial_trace only support without_host mode currently!"

    def wrap(f):
        return _partial_trace(f, without_host=True, **trace_options)

    return wrap if func is None else wrap(func)
