"""Higher-order gradients through a `PyTorchModule` call: its backward as a recorded op.

When an outer GradManager records a backward that passes through a torch call, the call's
``grad_graph`` applies `TorchGrad`: an op whose forward is ``torch.autograd.grad(...,
create_graph=True)`` over the call's torch graph (so that graph, and the graph of the gradient,
stay alive) and whose backward differentiates those gradients once more with torch. A
`TorchGrad` is itself a torch graph with leaves and outputs, so its own ``grad_graph`` applies
the next `TorchGrad` over it: nested GradManagers reach the third order and beyond.
"""
import re

import torch

from ...core import torch_bridge as _bridge
from ...core.dispatch import Op, apply

__all__ = ["TorchGrad", "grad_graph"]


def grad_graph(call, inputs, outputs, grads):
    """The ``grad_graph`` of a `_TorchCall` ``call``: one gradient Tensor (or None) per input
    (the call's tensor arguments, then the wrapper's parameters)."""
    if getattr(call, "outs", None) is None:
        raise RuntimeError(
            f"{call!r}: its torch graph is gone (the call was already differentiated, or ran "
            "without gradients); run the forward again while the GradManagers record"
        )
    if call.checkpointed:
        raise RuntimeError(
            f"{call!r}: torch.utils.checkpoint(use_reentrant=True) inside the torch module "
            "has no higher-order gradients (in torch either: its backward builds no graph); "
            "pass use_reentrant=False to checkpoint"
        )
    params = call.wrapper._torch_params.items
    n = call.n_inputs
    leaves = list(call.inputs[:n]) + list(params)
    need = call.needs_input_grad
    # an input is differentiated when it needs a gradient; a parameter when it is also trainable
    wanted = [bool(g) for g in need[:n]] + [bool(g) and tp.requires_grad
                                          for tp, g in zip(params, need[n:])]
    return _apply(TorchGrad(call, leaves, call.outs, wanted, order=1), inputs, grads)


def _apply(op, inputs, grads):
    """Apply `TorchGrad` ``op`` to the source op's ``inputs`` and output ``grads``: one
    gradient Tensor (or None) per source input."""
    if not any(op.wanted):
        return (None,) * len(inputs)
    got = apply(op, *inputs, *grads[:len(op.source_outs)])
    got = got if isinstance(got, tuple) else (got,)
    it = iter(got)
    return tuple(next(it) if w else None for w in op.wanted)


def _dense(g):
    """A sparse gradient (nn.Embedding(sparse=True)'s) as the first-order path hands it over:
    dense (``to_dense`` is differentiable, so a graph through it goes on)."""
    return g.to_dense() if g is not None and g.layout != torch.strided else g


# The nodes torch puts in a gradient's graph where no further derivative exists: a
# torch.autograd.Function's backward marked @once_differentiable (DelayedError, an "Error" node)
# and an op whose derivative of that order torch does not implement ("NotImplemented"). They hang
# off stand-in leaves, so torch.autograd.grad(inputs=...) may never run them and return the
# gradient without their part (None for an input reached only through them); torch's backward()
# runs them and raises.
_ONCE_DIFFERENTIABLE, _NOT_IMPLEMENTED = "torch::autograd::Error", "torch::autograd::NotImplemented"


def _ordinal(k):
    return {2: "second", 3: "third"}.get(k, f"{k}th")


def _torch_words(node):
    """What torch's ``node`` (an Error or NotImplemented node) raises when run: its own message,
    which names the op (``derivative for aten::_ctc_loss_backward is not implemented``, torch
    2.14's ``batch_norm does not support 3rd+ order derivatives.``). A node of several inputs
    first says how many it takes (``expected 3 arguments, got 1 instead``): it is run again
    with that many."""
    said = _raised(node, 1)
    arity = said and re.fullmatch(r"expected (\d+) arguments, got 1 instead", said)
    return _raised(node, int(arity.group(1))) if arity else said


def _raised(node, n):
    """The first line of what ``node`` raises when run on ``n`` zeros, or None."""
    try:
        node(*[torch.zeros(())] * n)
    except Exception as e:  # noqa: BLE001  (the message is all that is wanted)
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def _refuse_once_differentiable(call, ys, order):
    """Raise if torch's graph of the gradients ``ys`` (of order ``order - 1``) holds a node that
    has no derivative, instead of a gradient of order ``order`` missing that node's part."""
    stack, seen = [y.grad_fn for y in ys], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kind = node.name()
        if kind == _ONCE_DIFFERENTIABLE or kind == _NOT_IMPLEMENTED:
            said = _torch_words(node)
            said = f" (torch: '{said}')" if said else ""
            where = f"{call!r}: a {_ordinal(order)}-order gradient through this module passes "
            if kind == _ONCE_DIFFERENTIABLE:
                raise RuntimeError(
                    where + f"through a torch node that has no derivative of this order{said}: "
                    "a torch.autograd.Function whose backward is marked @once_differentiable, "
                    "or a torch op differentiable only so far (torch 2.14's batch norm, to the "
                    "second order); torch's backward() raises there too. Write such a backward "
                    "with differentiable torch operations (without @once_differentiable), or "
                    "keep the module out of this gradient")
            raise RuntimeError(
                where + "through a torch op whose derivative of this order torch does not "
                f"implement{said}, as torch.autograd.grad raises there; keep the module out of "
                "this gradient")
        stack.extend(next_node for next_node, _ in node.next_functions)


class TorchGrad(Op):
    """The gradients of a torch graph, computed by torch with a kept graph.

    The source is a torch graph seen as an op: ``source_leaves`` (one torch tensor, or None,
    per input of the source op) and ``source_outs`` (one torch tensor, or None, per output).
    Inputs: the source op's inputs, then one gradient per source output. Outputs: the gradients
    of the ``wanted`` source inputs, of order ``order``. As a torch graph itself its leaves are
    the source's and the incoming gradients', its outputs the gradients it computed, which is
    what the next order's `TorchGrad` differentiates.
    """

    def __init__(self, call, source_leaves, source_outs, wanted, order):
        self.call, self.wanted, self.order = call, wanted, order
        self.source_leaves, self.source_outs = source_leaves, source_outs

    def __repr__(self):
        return f"TorchGrad({self.call!r}, order={self.order})"

    def forward(self, *arrays):
        n_in = len(self.source_leaves)
        wrt = [t for t, w in zip(self.source_leaves, self.wanted) if w]
        outs, out_grads = [], []
        grad_leaves = [None] * len(self.source_outs)
        for i, (o, g) in enumerate(zip(self.source_outs, arrays[n_in:])):
            if o is not None and o.requires_grad:
                t = _bridge.to_torch(g).detach()
                if self.needs_input_grad[n_in + i]:
                    t = grad_leaves[i] = t.clone().requires_grad_(True)
                outs.append(o)
                out_grads.append(t)
        got = [None] * len(wrt)
        if outs and wrt:
            if self.order > 1:  # the source's outputs are gradients themselves
                _refuse_once_differentiable(self.call, outs, self.order)
            with torch.enable_grad():
                got = torch.autograd.grad(outs, wrt, out_grads, create_graph=True,
                                          allow_unused=True)
            got = [_dense(g) for g in got]
        # this op as a torch graph, for its backward and the next order's TorchGrad
        self.leaves = list(self.source_leaves) + grad_leaves
        self.outs = got
        results = []
        for g, target in zip(got, wrt):
            if g is None:  # not used by the outputs: a zero gradient, on the target's device
                results.append(_bridge.from_torch(torch.zeros_like(target, requires_grad=False)))
            else:
                results.append(_bridge.from_torch(g.detach()))
        return tuple(results) if len(results) != 1 else results[0]

    def _check_graph(self):
        if self.outs is None:
            raise RuntimeError(
                f"{self!r}: its torch graph is gone (this gradient was already differentiated "
                "by the GradManager recording around it)"
            )

    def backward(self, *ggs):
        self._check_graph()
        # what the next backward differentiates with respect to: every tracked input
        targets = [(i, t) for i, t in enumerate(self.leaves)
                   if self.needs_input_grad[i] and t is not None and t.requires_grad]
        ys, dys = [], []
        for g, gg in zip(self.outs, ggs):
            if g is not None and g.requires_grad:
                ys.append(g)
                dys.append(_bridge.to_torch(gg))
        result = [None] * len(self.needs_input_grad)
        if ys and targets:
            _refuse_once_differentiable(self.call, ys, self.order + 1)
            # retain: the call's own backward, and other orders', may still run through it
            got = torch.autograd.grad(ys, [t for _, t in targets], dys, allow_unused=True,
                                      retain_graph=True)
            for (i, _), g in zip(targets, got):
                if g is not None:
                    result[i] = _bridge.from_torch(_dense(g))
        self.outs = None  # drop the torch graph of the gradient
        return tuple(result)

    def grad_graph(self, inputs, outputs, grads):
        """The backward as a recorded op: the gradients of this op's gradients, of the next
        order, by a `TorchGrad` over this op's torch graph."""
        self._check_graph()
        need = self.needs_input_grad
        wanted = [bool(need[i]) and t is not None and t.requires_grad
                  for i, t in enumerate(self.leaves)]
        outs = [None if g is None or not g.requires_grad else g for g in self.outs]
        return _apply(TorchGrad(self.call, self.leaves, outs, wanted, self.order + 1),
                      inputs, grads)
