"""`GradManager`: which tensors want gradients, when ops are recorded, and backward into `.grad`."""
import weakref

from ..core import dispatch
from ..core.dispatch import Node
from ..core.tensor import Tensor
from ..device import get_array_module

__all__ = ["GradManager", "grad", "get_backwarding_grad_manager"]

# Distributed collectives need two things from the GradManagers (megengine.distributed):
# an output no loss uses whose op must still run its backward (a remote_send, the non-root side
# of reduce_sum/gather: its peers wait for it) is kept by every recording GradManager and
# backpropagated with a zero gradient; and a gradient callback that buckets gradients must run
# once more after the last gradient of a backward pass, before any is accumulated.
_recording_managers = []  # GradManagers recording now, in record() order
_backwarding = None  # the GradManager whose backward is running its callbacks


def get_backwarding_grad_manager():
    """The GradManager whose ``backward`` is running gradient callbacks now (None otherwise)."""
    return _backwarding


def _keep_for_backward(tensor):
    """Make every recording GradManager backpropagate from ``tensor`` (with a zero gradient)
    at its next ``backward``, whether or not the loss depends on it."""
    for gm in _recording_managers:
        gm._kept.append(tensor)


class Leaf(Node):
    """The graph node of an attached tensor: where backward delivers that tensor's gradient."""

    __slots__ = ()


def _light(t):
    """Make ops on ``t`` recorded: give it a leaf node (unless it is a live intermediate) and
    count one more recording GradManager on it. Returns the node to dim at release."""
    entry = t._node
    if entry is not None and not isinstance(entry[0], Leaf):
        if entry[0].live:
            return None  # computed in this recording: already tracked
        entry = None  # an output of a released graph: start afresh
    if entry is None:
        entry = t._node = (Leaf(None, (), ((t.shape, t.dtype),), live=0), 0)
    leaf = entry[0]
    leaf.out_meta = ((t.shape, t.dtype),)  # the value may have been replaced since
    leaf.live += 1
    return leaf


class GradManager:
    """Records the ops on attached tensors and computes their gradients (upstream's API).

    >>> gm = GradManager().attach(model.parameters())
    >>> with gm:
    ...     loss = model(x).sum()
    ...     gm.backward(loss)
    """

    def __init__(self):
        self._attached = {}  # id(tensor) -> (weakref to tensor, [callbacks])
        self._recording = False
        self._lit = []  # leaves this GradManager made live while recording
        self._kept = []  # outputs to backpropagate from besides y (see _keep_for_backward)
        self._after_backward_callbacks = []

    def attach(self, tensors, callbacks=None):
        """Attach tensors (one, or an iterable) so that backward writes their ``.grad``.

        ``callbacks``: a callable or a list of them, each ``cb(tensor, grad) -> grad``, run in
        order on the gradient before it is accumulated into ``tensor.grad``.
        """
        if isinstance(tensors, Tensor):
            tensors = [tensors]
        tensors = list(tensors)
        for t in tensors:
            if not isinstance(t, Tensor):
                raise TypeError(f"GradManager.attach: expected Tensors, got {type(t).__name__}")
            if t.dtype.kind != "f":
                raise TypeError(
                    f"GradManager.attach: only float tensors have gradients, got dtype {t.dtype}"
                )
        if callbacks is None:
            callbacks = []
        elif callable(callbacks):
            callbacks = [callbacks]
        else:
            callbacks = list(callbacks)
            if not all(callable(c) for c in callbacks):
                raise TypeError("GradManager.attach: callbacks must be callables cb(tensor, grad)")
        for t in tensors:
            entry = self._attached.get(id(t))
            if entry is None or entry[0]() is not t:
                self._attached[id(t)] = (weakref.ref(t, self._forget(id(t))), list(callbacks))
            else:
                entry[1].extend(callbacks)
            if self._recording:
                self._light(t)
        return self

    def _light(self, t):
        leaf = _light(t)
        if leaf is not None:
            self._lit.append(leaf)

    def _forget(self, key):
        ref = weakref.ref(self)

        def drop(_):
            gm = ref()
            if gm is not None:
                gm._attached.pop(key, None)

        return drop

    def attached_tensors(self):
        """The attached tensors that are still alive, in attach order."""
        return [t for t in (r() for r, _ in self._attached.values()) if t is not None]

    def detach(self, tensors):
        """Stop computing gradients for these tensors."""
        if isinstance(tensors, Tensor):
            tensors = [tensors]
        for t in tensors:
            self._attached.pop(id(t), None)
        return self

    def is_attached(self, t):
        entry = self._attached.get(id(t))
        return entry is not None and entry[0]() is t

    # ----- recording -----
    def record(self):
        """Start recording the ops on attached tensors."""
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            return dispatch._trace_hook.event(GradManager.record, self)
        if self._recording:
            raise RuntimeError("GradManager.record: already recording")
        self._recording = True
        dispatch._set_recording(+1)
        _recording_managers.append(self)
        for t in self.attached_tensors():
            self._light(t)
        return self

    def release(self):
        """Stop recording and drop the graph recorded so far."""
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            return dispatch._trace_hook.event(GradManager.release, self)
        if self._recording:
            self._recording = False
            dispatch._set_recording(-1)
            _recording_managers.remove(self)
            self._kept = []
            for leaf in self._lit:
                leaf.live -= 1
            self._lit = []

    def __enter__(self):
        self.record()
        return self

    def __exit__(self, *exc):
        self.release()

    def _register_after_backward_callback(self, callback):
        """Run ``callback()`` in every backward, after the gradient callbacks of all tensors
        and before the gradients are accumulated into ``.grad``."""
        self._after_backward_callbacks.append(callback)
        return self

    # ----- backward -----
    def backward(self, y=None, dy=None):
        """Accumulate d(y)/d(attached) into each attached tensor's ``.grad``, then release.

        ``y``: a tensor or a list of them; ``dy``: matching output gradients (default ones).
        ``y`` may be omitted when only outputs kept by distributed ops are differentiated
        (the sending side of ``remote_send``).
        """
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            return dispatch._trace_hook.event(GradManager.backward, self, y, dy)
        if y is None and not self._kept:
            raise ValueError("GradManager.backward: give the tensor(s) to differentiate")
        if not self._recording:
            raise RuntimeError(
                "GradManager.backward: not recording; compute y inside `with gm:` or after "
                "gm.record()"
            )
        try:
            ys, dys = _pair_outputs(y, dy, "GradManager.backward") if y is not None else ([], [])
            for t in self._kept:
                if t._node is not None and t._node[0].live:
                    ys.append(t)
                    dys.append(get_array_module(t._device).zeros(t.shape, t.dtype))
            wanted = {}
            for r, callbacks in self._attached.values():
                t = r()
                if t is not None and t._node is not None:
                    node, idx = t._node
                    wanted[(id(node), idx)] = (t, callbacks)
            found = dispatch.run_backward(ys, dys, wanted)
            global _backwarding
            _backwarding = self
            try:
                ready = [(wanted[key][0], _run_callbacks(*wanted[key], g)) for key, g in found.items()]
                for callback in self._after_backward_callbacks:
                    callback()
            finally:
                _backwarding = None
            for t, grad in ready:
                _add_grad(t, grad)
        finally:
            self.release()


def _pair_outputs(y, dy, what):
    ys = list(y) if isinstance(y, (list, tuple)) else [y]
    if dy is None:
        dys = [None] * len(ys)
    else:
        dys = list(dy) if isinstance(dy, (list, tuple)) else [dy]
    if len(dys) != len(ys):
        raise ValueError(f"{what}: got {len(ys)} outputs but {len(dys)} output gradients")
    arrays = []
    for t, d in zip(ys, dys):
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}: expected Tensors to differentiate, got {type(t).__name__}")
        xp = get_array_module(t._device)
        if d is None:
            arrays.append(xp.ones(t.shape, t.dtype))
        else:
            d = d._data if isinstance(d, Tensor) else xp.asarray(d, t.dtype)
            if d.shape != t.shape:
                raise ValueError(
                    f"{what}: output gradient of shape {d.shape} for an output of shape {t.shape}"
                )
            arrays.append(d.astype(t.dtype, copy=False))
    return ys, arrays


def _run_callbacks(t, callbacks, g):
    if g.dtype != t.dtype:
        g = g.astype(t.dtype)
    if not getattr(g.flags, "writeable", True) or not g.flags.c_contiguous:
        g = g.copy()  # broadcast views and strided views would surprise in-place grad edits
    grad = Tensor._wrap(g, t._device)
    for cb in callbacks:
        grad = cb(t, grad)
        if not isinstance(grad, Tensor):
            raise TypeError(f"a GradManager callback must return a Tensor, got {type(grad).__name__}")
    return grad


def _add_grad(t, grad):
    if t.grad is None:
        t.grad = grad
    else:
        t.grad = Tensor._wrap(t.grad._data + grad._data, t._device)


def grad(y, x, use_virtual_grad=None):
    """0.x ``F.grad``: gradients of ``y`` with respect to ``x`` (a tensor or a list of them).

    The ops from ``x`` to ``y`` must have been recorded (``x`` attached to a recording
    GradManager). The graph is kept, and ``.grad`` is not touched.
    """
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    wanted = {}
    for t in xs:
        if t._node is None:
            raise RuntimeError(
                "grad: x was not recorded; attach it to a GradManager and compute y while it records"
            )
        wanted[(id(t._node[0]), t._node[1])] = t
    ys, dys = _pair_outputs(y, None, "grad")
    found = dispatch.run_backward(ys, dys, wanted, free_graph=False)
    out = []
    for t in xs:
        g = found.get((id(t._node[0]), t._node[1]))
        xp = get_array_module(t._device)
        out.append(Tensor._wrap(g if g is not None else xp.zeros(t.shape, t.dtype), t._device))
    return out if isinstance(x, (list, tuple)) else out[0]
