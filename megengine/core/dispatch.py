"""The one op dispatcher: `apply(op, *tensors)` runs an op's forward and records it for autodiff.

An op is an object with ``forward(*arrays)`` and ``backward(*output_grads)`` on raw arrays
(numpy, or CuPy on CUDA devices). ``apply`` creates one op instance per call, so an op may keep
what its backward needs on ``self``. Before ``forward`` runs, ``op.needs_input_grad`` is set to a
tuple of bools: which inputs the recorded graph wants gradients for (all False when nothing is
being recorded), so expensive ops can skip work nobody will use.

``backward`` receives one gradient per output (zeros are filled in for outputs nobody used) and
returns one gradient per input (a tuple, or a single array for a one-input op); ``None`` means
"no gradient" (integer inputs, indices, ...).

Recording: while at least one GradManager records, an op whose inputs include a tracked tensor
(one attached to a GradManager, or computed from one) gets a graph `Node`; its outputs are
tracked too. Nothing else is recorded, so inference costs no graph.
"""
import numpy as np

__all__ = ["Op", "apply", "Node", "is_recording", "run_backward"]

_recording = 0  # how many GradManagers are recording right now
# megengine.jit.trace: while a traced function records or is checked, every apply goes through
# this hook (see megengine/jit/tracing.py); None otherwise, so untraced code pays one global read.
_trace_hook = None
_NO_GRAD = {}  # input count -> all-False tuple, so the fast path allocates nothing


class Op:
    """Base class of every differentiable computation. Subclasses define forward and backward."""

    needs_input_grad = ()

    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, *output_grads):
        raise NotImplementedError(
            f"{type(self).__name__} has no backward: it cannot be differentiated"
        )

    def __repr__(self):
        return type(self).__name__


class Node:
    """One recorded op in the autodiff graph (or a leaf: an attached tensor, op None).

    ``live`` says whether ops on this node's tensors are recorded: for an op node, until the
    graph is released; for a leaf, while at least one GradManager it is attached to records
    (the count of such GradManagers).
    """

    __slots__ = ("op", "parents", "out_meta", "live", "__weakref__")

    def __init__(self, op=None, parents=(), out_meta=((), ), live=1):
        self.op = op
        self.parents = parents  # per input: (Node, output index) or None
        self.out_meta = out_meta  # per output: (shape, dtype), to make zeros for unused outputs
        self.live = live

    def free(self):
        """Drop the op (and the arrays it saved) and the links upwards: the graph is released."""
        if self.op is not None:
            self.op = None
            self.parents = ()
            self.live = 0


def is_recording() -> bool:
    return _recording > 0


def _set_recording(delta):
    global _recording
    _recording += delta


Tensor = None  # megengine.core.tensor.Tensor, set when that module loads (it imports this one)


def _is_float(dtype):
    return dtype.kind == "f"


def apply(op, *inputs):
    """Run ``op`` on tensors; return a Tensor, or a tuple of Tensors for multi-output ops."""
    if _trace_hook is not None:  # megengine.jit.trace: it records/checks, then applies
        return _trace_hook(op, inputs)
    device = inputs[0]._device if inputs else op.device  # an op with no inputs names its device
    for t in inputs:
        if t._device != device:
            raise ValueError(
                f"{op!r}: inputs are on different devices ({device} and {t._device}); "
                "move them with .to(device) first"
            )
    arrays = [t._data for t in inputs]
    parents = None
    if _recording:
        for t in inputs:
            if t._node is not None and t._node[0].live:
                parents = tuple(t._node if t._node is not None and t._node[0].live else None
                                for t in inputs)
                break
    if parents is None:
        n = len(inputs)
        needs = _NO_GRAD.get(n)
        if needs is None:
            needs = _NO_GRAD[n] = (False,) * n
        op.needs_input_grad = needs
        out = op.forward(*arrays)
        if isinstance(out, tuple):
            return tuple(Tensor._wrap(o, device) for o in out)
        return Tensor._wrap(out, device)

    op.needs_input_grad = tuple(
        p is not None and _is_float(a.dtype) for p, a in zip(parents, arrays)
    )
    out = op.forward(*arrays)
    multi = isinstance(out, tuple)
    outs = out if multi else (out,)
    node = Node(op, parents, tuple((o.shape, o.dtype) for o in outs))
    results = []
    for i, o in enumerate(outs):
        t = Tensor._wrap(o, device)
        if _is_float(o.dtype):
            t._node = (node, i)
        results.append(t)
    return tuple(results) if multi else results[0]


def _graph_order(roots):
    """Nodes reachable from ``roots``, children before parents (reverse topological order)."""
    order, visited = [], set()
    for root in roots:
        if id(root) in visited:
            continue
        visited.add(id(root))
        stack = [(root, iter(root.parents))]
        while stack:
            node, it = stack[-1]
            for p in it:
                if p is not None and id(p[0]) not in visited:
                    visited.add(id(p[0]))
                    stack.append((p[0], iter(p[0].parents)))
                    break
            else:
                stack.pop()
                order.append(node)
    order.reverse()
    return order


def run_backward(ys, dys, wanted, free_graph=True):
    """Backpropagate ``dys`` from tensors ``ys``; return {wanted (node, idx): gradient array}.

    ``wanted`` is a set of (id(node), index) pairs whose total gradient the caller needs (the
    tensors it attached). With ``free_graph`` every visited node is released afterwards.
    """
    grads = {}  # id(node) -> list of accumulated output gradients
    roots = []
    for y, dy in zip(ys, dys):
        if y._node is None:
            continue
        node, idx = y._node
        slot = grads.setdefault(id(node), [None] * len(node.out_meta))
        slot[idx] = dy if slot[idx] is None else slot[idx] + dy
        roots.append(node)
    found = {}
    order = _graph_order(roots)
    try:
        for node in order:
            slot = grads.pop(id(node), None)
            if slot is None:
                continue
            for i, g in enumerate(slot):
                if g is not None and (id(node), i) in wanted:
                    found[(id(node), i)] = g
            op = node.op
            if op is None:
                continue  # a leaf, or a graph that was already released
            if not any(op.needs_input_grad):
                continue
            full = [
                g if g is not None else _zeros_like_meta(g_meta, slot)
                for g, g_meta in zip(slot, node.out_meta)
            ]
            in_grads = op.backward(*full)
            if not isinstance(in_grads, (tuple, list)):
                in_grads = (in_grads,)
            if len(in_grads) != len(node.parents):
                raise RuntimeError(
                    f"{op!r}.backward returned {len(in_grads)} gradients for "
                    f"{len(node.parents)} inputs"
                )
            for parent, g, needed in zip(node.parents, in_grads, op.needs_input_grad):
                if parent is None or g is None or not needed:
                    continue
                pnode, pidx = parent
                pslot = grads.get(id(pnode))
                if pslot is None:
                    pslot = grads[id(pnode)] = [None] * len(pnode.out_meta)
                shape = pnode.out_meta[pidx][0]
                if g.shape != shape:
                    raise RuntimeError(
                        f"{op!r}.backward gave a gradient of shape {g.shape} for an input "
                        f"of shape {shape}"
                    )
                pslot[pidx] = g if pslot[pidx] is None else pslot[pidx] + g
            if free_graph:  # its saved arrays go now, not at the end (as torch frees them)
                node.free()
    finally:
        if free_graph:
            for node in order:
                node.free()
    return found


def _zeros_like_meta(meta, slot):
    """Zeros for an output nobody used, on the device of the output gradients that exist."""
    shape, dtype = meta
    present = next(g for g in slot if g is not None)  # backward only visits nodes with one
    return xp_of(present).zeros(shape, dtype)


def xp_of(a):
    """The array module of ``a`` (numpy, or CuPy for a GPU array)."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np
