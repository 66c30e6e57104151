"""What a `PyTorchModule` call reads off torch's autograd graph: the order in which torch would
hand out the gradients (a `_TorchCall`'s ``grad_order``), whether the graph holds a reentrant
``torch.utils.checkpoint`` (whose backward only torch's ``backward()`` runs), and the leaf
tensors a backward reaches.

The order, so GradManager callbacks see a `PyTorchModule`'s inputs and parameters in the order
torch's own hooks would (``Linear(4, 3) -> ReLU -> Linear(3, 2)``: the last layer's bias, its
weight, the first layer's bias, its weight, then the input). The whole torch module is one op of
megengine's graph, so its gradients all become ready at once; which of them callbacks see first
is read off torch's autograd graph with the engine's own rule (megengine/core/dispatch.py,
`_graph_order`), which is torch's: nodes run in the reverse of their forward order (torch's
sequence numbers), and a leaf's gradient is complete right after the last node to give it one,
the leaves of one node in input order (torch's ready queue keeps that order for up to three
leaves of one node; beyond, its heap order is not reproduced).

Reading the graph costs a walk over it, so the order and the checkpoint question are answered
in one walk (`read`) on the first recorded call per mode (train/eval) and set of inputs needing
gradients, and reused: a module whose graph changes between calls keeps the first call's order
(gradients are unaffected).
"""

__all__ = ["read", "leaves"]


def read(inputs, params, outs, given=None):
    """``(grad_order, checkpointed)`` of a call. ``grad_order``: the op's input indices in the
    order torch completes their gradients, those it gives none last, in input order;
    ``checkpointed``: whether the graph holds a torch.utils.checkpoint(use_reentrant=True) node,
    whose backward refuses torch.autograd.grad (it re-runs the forward and calls backward()
    itself). ``inputs``: the torch tensors made of the call's tensor arguments; ``params``: the
    torch parameters (the op's inputs after them); ``outs``: the outputs; ``given``: what the
    module was called with where it got copies of ``inputs`` (their clone nodes stand for the
    inputs, as on the calls that pass the inputs themselves)."""
    from torch.utils.checkpoint import CheckpointFunction

    stand_in = {} if given is None else {
        c.grad_fn: t for c, t in zip(given, inputs) if c is not t and c.grad_fn is not None}
    nodes = _nodes(outs, stand_in)
    checkpointed = any(getattr(n, "_forward_cls", None) is CheckpointFunction for n in nodes)
    return _read_order(nodes, inputs, params, stand_in), checkpointed


def leaves(outs):
    """The leaf tensors whose ``.grad`` torch's backward from ``outs`` accumulates into (outside
    a reentrant checkpoint: what it runs is only built while backward runs)."""
    found = {}
    for node in _nodes(outs):
        for parent, _ in node.next_functions:
            if parent is not None and hasattr(parent, "variable"):
                found.setdefault(id(parent), parent.variable)
    return list(found.values())


def _nodes(outs, stand_in=()):
    """The autograd nodes behind ``outs``, leaves' AccumulateGrad nodes (and ``stand_in``'s,
    which stand for leaves) left out."""
    nodes = []
    seen = set(stand_in)
    for o in outs:
        root = o.grad_fn
        if root is not None and root not in seen:
            seen.add(root)
            nodes.append(root)
    for node in nodes:  # grows while it is walked
        for parent, _ in node.next_functions:
            if parent is not None and parent not in seen and not hasattr(parent, "variable"):
                seen.add(parent)
                nodes.append(parent)
    return nodes


def _read_order(nodes, inputs, params, stand_in):
    position = {id(t): i for i, t in enumerate(inputs)}
    position.update((id(p), i) for i, p in enumerate(params, len(inputs)))
    ready = []
    for leaf in _leaves_in_ready_order(nodes, stand_in):
        i = position.get(id(leaf))
        if i is not None and i not in ready:
            ready.append(i)
    taken = set(ready)
    return tuple(ready + [i for i in range(len(position)) if i not in taken])


def _leaves_in_ready_order(nodes, stand_in):
    """The variables of the AccumulateGrad nodes under ``nodes`` (`_nodes`), in the order their
    gradients are complete (a ``stand_in`` node counts as its leaf's)."""
    order = []  # forward order, reversed below: before each node, the leaves it uses first
    seen = set()
    for node in sorted(nodes, key=lambda n: n._sequence_nr()):
        for parent, _ in reversed(node.next_functions):
            if parent is None or parent in seen:
                continue
            if hasattr(parent, "variable"):
                seen.add(parent)
                order.append(parent.variable)
            elif parent in stand_in:
                seen.add(parent)
                order.append(stand_in[parent])
        order.append(None)  # the node itself: no variable
    order.reverse()
    return [v for v in order if v is not None]
