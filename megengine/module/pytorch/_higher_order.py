"""Higher-order gradients through a `PyTorchModule` call: its backward as a recorded op.

When an outer GradManager records a backward that passes through a torch call, the call's
``grad_graph`` applies `TorchGrad`: an op whose forward is ``torch.autograd.grad(...,
create_graph=True)`` over the call's torch graph (so that graph, and the graph of the gradient,
stay alive) and whose backward differentiates those gradients once more with torch.
"""
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
    wanted = _wanted(call)
    if not any(wanted):
        return (None,) * len(inputs)
    n_out = len(call.outs)
    got = apply(TorchGrad(call, wanted), *inputs, *grads[:n_out])
    got = got if isinstance(got, tuple) else (got,)
    it = iter(got)
    return tuple(next(it) if w else None for w in wanted)


def _wanted(call):
    """Per input of the call: does it get a gradient (needed, and a trainable torch tensor)?"""
    n = call.n_inputs
    need = call.needs_input_grad
    params = call.wrapper._torch_params.items
    return [bool(g) for g in need[:n]] + [bool(g) and tp.requires_grad
                                          for tp, g in zip(params, need[n:])]


def _dense(g):
    """A sparse gradient (nn.Embedding(sparse=True)'s) as the first-order path hands it over:
    dense (``to_dense`` is differentiable, so a graph through it goes on)."""
    return g.to_dense() if g is not None and g.layout != torch.strided else g


# The nodes torch puts in a gradient's graph where no second derivative exists: a
# torch.autograd.Function's backward marked @once_differentiable (DelayedError) and an op whose
# double backward torch lacks. They hang off stand-in leaves, so torch.autograd.grad(inputs=...)
# never runs them and returns the gradient without their part (None for an input reached only
# through them); torch's backward() runs them and raises.
_NO_SECOND_DERIVATIVE = frozenset(("torch::autograd::Error", "torch::autograd::NotImplemented"))


def _refuse_once_differentiable(call, ys):
    """Raise if torch's graph of the first-order gradients ``ys`` holds a node that has no
    derivative, instead of a second-order gradient missing that node's part."""
    stack, seen = [y.grad_fn for y in ys], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() in _NO_SECOND_DERIVATIVE:
            raise RuntimeError(
                f"{call!r}: a second-order gradient through this module passes through a "
                "torch.autograd.Function whose backward is marked @once_differentiable (or a "
                "torch op without a double backward), which has none; torch's backward raises "
                "'trying to differentiate twice' there too. Write that backward with "
                "differentiable torch operations (without @once_differentiable), or keep "
                "the module out of the higher-order gradient"
            )
        stack.extend(next_node for next_node, _ in node.next_functions)


class TorchGrad(Op):
    """Inputs: the call's inputs and parameters, then one gradient per call output. Outputs:
    the gradients of the wanted inputs/parameters, computed by torch with a kept graph."""

    def __init__(self, call, wanted):
        self.call, self.wanted = call, wanted

    def __repr__(self):
        return f"TorchGrad({self.call!r})"

    def forward(self, *arrays):
        call = self.call
        n_in = len(self.wanted)
        n = call.n_inputs
        params = call.wrapper._torch_params.items
        self.wrt = [t for t, w in zip(call.inputs, self.wanted[:n]) if w]
        self.wrt += [tp for tp, w in zip(params, self.wanted[n:]) if w]
        outs, out_grads, self.grad_slots = [], [], []
        for i, (o, g) in enumerate(zip(call.outs, arrays[n_in:])):
            if o.requires_grad:
                t = _bridge.to_torch(g).detach()
                if self.needs_input_grad[n_in + i]:
                    t = t.clone().requires_grad_(True)
                    self.grad_slots.append((n_in + i, t))
                outs.append(o)
                out_grads.append(t)
        self.got = [None] * len(self.wrt)
        if outs and self.wrt:
            with torch.enable_grad():
                got = torch.autograd.grad(outs, self.wrt, out_grads, create_graph=True,
                                          allow_unused=True)
            self.got = [_dense(g) for g in got]
        results = []
        for g, target in zip(self.got, self.wrt):
            if g is None:  # not used by the outputs: a zero gradient, on the target's device
                results.append(_bridge.from_torch(torch.zeros_like(target, requires_grad=False)))
            else:
                results.append(_bridge.from_torch(g.detach()))
        return tuple(results) if len(results) != 1 else results[0]

    def backward(self, *ggs):
        n = self.call.n_inputs
        # what the second backward differentiates with respect to: every tracked input
        targets = []
        for i, w in enumerate(self.wanted):
            if not self.needs_input_grad[i]:
                continue
            if i < n:
                t = self.call.inputs[i]
            else:
                t = self.call.wrapper._torch_params.items[i - n]
            if t.requires_grad:
                targets.append((i, t))
        targets += self.grad_slots
        ys, dys = [], []
        for g, gg in zip(self.got, ggs):
            if g is not None and g.requires_grad:
                ys.append(g)
                dys.append(_bridge.to_torch(gg))
        result = [None] * len(self.needs_input_grad)
        if ys and targets:
            _refuse_once_differentiable(self.call, ys)
            # retain: the call's own backward may still run through the forward graph
            got = torch.autograd.grad(ys, [t for _, t in targets], dys, allow_unused=True,
                                      retain_graph=True)
            for (i, _), g in zip(targets, got):
                if g is not None:
                    result[i] = _bridge.from_torch(_dense(g))
        self.got = None  # drop the torch graph of the gradient
        return tuple(result)
