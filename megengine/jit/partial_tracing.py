"""`partial_trace`: trace one part of a training step (a module's forward) so that it replays
inside an eager step, its backward included."""
from .tracing import trace


def partial_trace(func=None, *, backend="default", without_host=True, **trace_options):
    """Trace ``func`` so that later calls replay its ops without running its Python code, while
    the code around it (the loss, ``gm.backward``, the optimizer) stays eager.

    Upstream records the forward and the backward of ``func`` as two graphs and glues them with
    a custom autodiff function. Here a replay applies every recorded op through the dispatcher,
    so a recording GradManager records them and its backward runs each op's own backward: the
    backward needs no second trace and gradients are those of eager code.

    ``backend``: only ``"default"`` (upstream's ``"xla"`` backend needs XLA, absent here).
    ``without_host`` must be True, as upstream asserts. Other keyword arguments go to `trace`.
    """
    if backend != "default":
        raise ValueError(f"partial_trace: backend {backend!r} is not available in this fork; "
                         "use backend='default'")
    assert without_host, "partial_trace only support without_host mode currently!"

    def wrap(f):
        return trace(f, without_host=True, **trace_options)

    return wrap if func is None else wrap(func)
