"""`xla_trace`: upstream 1.13's XLA-compiled trace, here a `trace` that replays its record
without running Python (``without_host=True``); nothing is compiled by XLA in this fork.

Upstream's ``xla_trace`` records the function on its first call, compiles the program with XLA
and then runs the compiled executable on every later call: the Python function does not run
again (upstream requires ``without_host=True``), tensors reached through the arguments
(tensor arguments, the parameters and buffers of a Module argument, the parameters of an
Optimizer argument) are the program's inputs and are updated in place, and with
``capture_as_const=True`` every other tensor the function reads is frozen at its traced value.

This engine has no XLA and no graph compiler: ops run one by one on numpy (CuPy on CUDA
devices). The closest of our modes to those semantics is the ``without_host`` replay, so
``xla_trace`` is ``trace(without_host=True)``: the first call of each signature runs eagerly and
records; later calls replay the recorded ops and events (GradManager record/backward, optimizer
steps) on the new arguments without running Python. Under ``capture_as_const=True`` the
tensors of Module and Optimizer arguments (and of the instance, for a traced Module method)
stay live, as upstream's inputs, so a training step updates the model; other tensors from
outside the function are captured at trace time. GradManager callbacks are part of the program
as in upstream's: their ops (``F.clip(grad)``) are replayed, their Python side effects happen
on the first call only (`grad_callbacks`; a callback that reads a value to the host, or returns
a tensor no op made, is still called on every replay). A warning says so once per process.
"""
import warnings

from .tracing import trace

__all__ = ["xla_trace"]

_warned = False  # the "XLA is not used" warning is given once per process


class xla_trace(trace):
    """Upstream's ``xla_trace(function, *, without_host=True, symbolic_shape=False, **kwargs)``
    (other keyword arguments as `trace`), run here as ``trace(without_host=True)``: no XLA, no
    compilation (see the module docstring).

    Usage as upstream's::

        @xla_trace(capture_as_const=True)
        def train_step(model, opt, data, label):
            with gm:
                loss = F.loss.cross_entropy(model(data), label)
                gm.backward(loss)
            opt.step().clear_grad()
            return loss

    Raises ``ValueError`` for what cannot be honoured: ``without_host=False`` (upstream
    compiles the whole program and never reruns Python), ``symbolic_shape=True`` (no dynamic
    shapes, as upstream) and ``imperative=True`` (which runs every call eagerly; use
    ``trace(imperative=True)`` for that).
    """

    third_party_backend = True  # upstream's marker of a trace run by another backend

    def __init__(self, function, *, without_host=True, symbolic_shape=False, **kwargs):
        if not without_host:
            raise ValueError("xla_trace: only without_host=True is supported (as upstream): the "
                             "traced program replaces the Python function after the first call. "
                             "Use megengine.jit.trace to rerun Python on every call")
        if symbolic_shape:
            raise ValueError("xla_trace: symbolic_shape=True is not supported (as upstream, XLA "
                             "needs static shapes): each input shape gets its own program")
        if kwargs.get("imperative"):
            raise ValueError("xla_trace: imperative=True runs every call eagerly, which is not a "
                             "compiled trace; use megengine.jit.trace(imperative=True)")
        global _warned
        if not _warned:
            _warned = True
            warnings.warn(
                "megengine.jit.xla_trace: XLA is not used in this build; the function is "
                "recorded on its first call and later calls replay the recorded ops without "
                "running Python, op by op on numpy/CuPy (trace(without_host=True))",
                UserWarning, stacklevel=2)
        super().__init__(function, without_host=True, symbolic_shape=False, **kwargs)

    def _live_externals(self, bound, args, kwargs):
        """The tensors a ``capture_as_const`` recording keeps live: those of the Modules and
        Optimizers among the arguments and the bound instance (upstream's program inputs)."""
        from ..module import Module
        from ..optimizer import Optimizer

        live = set()
        pending = [*bound, *args, *kwargs.values()]
        while pending:
            obj = pending.pop()
            if isinstance(obj, Module):
                live.update(id(t) for t in obj.parameters())
                live.update(id(t) for t in obj.buffers())
            elif isinstance(obj, Optimizer):
                live.update(id(t) for g in obj.param_groups for t in g["params"])
            elif isinstance(obj, (tuple, list)):
                pending.extend(obj)
            elif isinstance(obj, dict):
                pending.extend(obj.values())
        return live
