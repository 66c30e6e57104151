"""The order in which torch would hand out a wrapped module's gradients, as a `_TorchCall`'s
``grad_order``, so GradManager callbacks see a `PyTorchModule`'s inputs and parameters in the
order torch's own hooks would (``Linear(4, 3) -> ReLU -> Linear(3, 2)``: the last layer's bias,
its weight, the first layer's bias, its weight, then the input).

The whole torch module is one op of megengine's graph, so its gradients all become ready at
once; which of them callbacks see first is read off torch's autograd graph with the engine's
own rule (megengine/core/dispatch.py, `_graph_order`), which is torch's: nodes run in the
reverse of their forward order (torch's sequence numbers), and a leaf's gradient is complete
right after the last node to give it one, the leaves of one node in input order (torch's ready
queue keeps that order for up to three leaves of one node; beyond, its heap order is not
reproduced). Reading the graph costs a walk over it, so it is done on the first recorded call
per mode (train/eval) and set of inputs needing gradients, and reused: a module whose graph
changes between calls keeps the first call's order (gradients are unaffected).
"""
import weakref

__all__ = ["grad_order"]

# wrapper -> {(training, needs_input_grad): grad_order}
_learned = weakref.WeakKeyDictionary()


def grad_order(wrapper, training, needs, inputs, params, outs):
    """The ``grad_order`` of a `_TorchCall` of ``wrapper`` (learned on first use, see above):
    the op's input indices in the order torch completes their gradients, those it gives none
    last, in input order. ``inputs``: the torch tensors made of the call's tensor arguments;
    ``params``: the torch parameters (the op's inputs after them); ``outs``: the outputs."""
    orders = _learned.get(wrapper)
    if orders is None:
        orders = _learned[wrapper] = {}
    key = (training, needs)
    order = orders.get(key)
    if order is None:
        order = orders[key] = _read_order(inputs, params, outs)
    return order


def _read_order(inputs, params, outs):
    position = {id(t): i for i, t in enumerate(inputs)}
    position.update((id(p), i) for i, p in enumerate(params, len(inputs)))
    ready = []
    for leaf in _leaves_in_ready_order([o.grad_fn for o in outs if o.grad_fn is not None]):
        i = position.get(id(leaf))
        if i is not None and i not in ready:
            ready.append(i)
    taken = set(ready)
    return tuple(ready + [i for i in range(len(position)) if i not in taken])


def _leaves_in_ready_order(roots):
    """The variables of the AccumulateGrad nodes reachable from ``roots`` (torch autograd
    nodes), in the order their gradients are complete."""
    nodes, seen = [], set()
    for root in roots:
        if root not in seen:
            seen.add(root)
            nodes.append(root)
    for node in nodes:  # grows while it is walked
        for parent, _ in node.next_functions:
            if parent is not None and parent not in seen and not hasattr(parent, "variable"):
                seen.add(parent)
                nodes.append(parent)
    nodes.sort(key=lambda n: n._sequence_nr())
    order = []  # forward order, reversed below: before each node, the leaves it uses first
    for node in nodes:
        for parent, _ in reversed(node.next_functions):
            if parent is not None and parent not in seen and hasattr(parent, "variable"):
                seen.add(parent)
                order.append(parent.variable)
        order.append(None)  # the node itself: no variable
    order.reverse()
    return [v for v in order if v is not None]
