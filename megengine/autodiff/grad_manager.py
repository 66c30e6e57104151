"""`GradManager` (and `gm1 | gm2` groups): which tensors want gradients, when ops are recorded,
and backward into `.grad`."""
import bisect
import weakref
from collections.abc import Iterable

import numpy as np

from ..core import dispatch
from ..core.dispatch import Node
from ..core.ops import ArgumentError, Copy, Identity, move_array
from ..core.tensor import Tensor, check_grad_is_tensor
from ..device import get_array_module

__all__ = ["GradManager", "GradManagerGroup", "grad", "get_backwarding_grad_manager"]

# Distributed collectives need two things from the GradManagers (megengine.distributed):
# an output no loss uses whose op must still run its backward (a remote_send, the non-root side
# of reduce_sum/gather: its peers wait for it) is kept by every recording GradManager and
# backpropagated with a zero gradient; and a gradient callback that buckets gradients must run
# once more after the last gradient of a backward pass, before any is accumulated.
_recording_managers = []  # GradManagers recording now, in record() order
_backwarding = None  # the GradManager whose backward is running its callbacks
# megengine.jit's without_host traces (megengine/jit/grad_callbacks.py): while one records or
# replays a backward, a callable ``capture(cb, tensor, grad) -> grad`` that each callback call
# goes through (recording its ops; replaying them instead of running Python); None otherwise
_callback_capture = None


def get_backwarding_grad_manager():
    """The GradManager whose ``backward`` is running gradient callbacks now (None otherwise)."""
    return _backwarding


def _keep_for_backward(tensor):
    """Make every recording GradManager backpropagate from ``tensor`` (with a zero gradient)
    at its next ``backward``, whether or not the loss depends on it."""
    for gm in _recording_managers:
        gm._kept.append(tensor)


class AttachError(TypeError, AssertionError):
    """A bad argument to attach. Upstream asserts here, so its tests expect AssertionError;
    TypeError says what kind of mistake it is."""


class Leaf(Node):
    """The graph node of an attached tensor: where backward delivers that tensor's gradient."""

    __slots__ = ()


def _light(t, key, own, mid=False):
    """Make ops on ``t`` recorded for ``key`` (``own`` is the tuple ``(key,)``, shared so that
    single-recording graphs compare key tuples by identity). ``mid``: while ``key`` records
    (an attach), when ops it recorded may already have used ``t``: a node of another live
    recording that ``key`` takes up is joined (`Key.join`), so those ops see a constant, as
    they saw it when they ran (test: autodiff fuzz program 11005); an intermediate ``key``
    itself computed gets a node of its own, so that its gradient is that of the ops made from
    now on (upstream 1.13 measured: ``y = x * 2; z = y * 3; gm.attach(y); w = y * 5``, then a
    backward of ``z + w`` gives ``y`` 5, and ``x`` 16)."""
    entry = t._node
    if entry is not None and not isinstance(entry[0], Leaf):
        node = entry[0]
        live = dispatch._alive(node.keys)
        if live:  # computed in a live recording of another GradManager: it joins this one
            if key not in live:
                node.keys = live + (key,)
                if mid:
                    key.join(node)
                return node  # ... as a leaf: this backward stops there
            if mid:  # (the ops made before read the old node: their gradients reach x alone)
                _pass_through(t, node, entry[1])
            return None
        entry = None  # an output of a released graph: start afresh
    used = mid and entry is not None  # (a leaf made now has no consumers yet)
    if entry is None:
        entry = t._node = (Leaf(None, (), ((t.shape, t.dtype),)), 0)
    leaf = entry[0]
    data = t._data
    leaf.out_meta = ((data.shape, data.dtype),)  # the value may have been replaced since
    ks = leaf.keys
    if not ks or (len(ks) == 1 and not ks[0].alive):  # the common case: a fresh recording
        leaf.keys = own
    else:
        live = dispatch._alive(ks)
        if not live:
            leaf.keys = own
        elif key not in live:
            leaf.keys = live + (key,)
        else:
            return None
    if used:  # ops this recording made may have used t already (with another recording's
        key.join(leaf)  # key on the leaf, or through an op on it): constants for this one
    return None


def _pass_through(t, node, idx):
    """Give ``t`` (output ``idx`` of ``node``) a node of its own, an identity on that output:
    ops made from now on read it, and backward passes its gradient on to ``node``."""
    op = Identity()
    op.needs_input_grad = (True,)
    new = Node(op, ((node, idx),), (node.out_meta[idx],), node.keys, node.device)
    if dispatch._recording > 1:  # (the values an outer recording's backward reads, as `apply`
        data = t._data  # keeps an op's while several GradManagers record)
        new.saved = ((data,), (data,), t._device)
    t._node = (new, 0)


class GradManager:
    """Records the ops on attached tensors and computes their gradients (upstream's API).

    >>> gm = GradManager().attach(model.parameters())
    >>> with gm:
    ...     loss = model(x).sum()
    ...     gm.backward(loss)

    Several GradManagers may record at once. Nested ones give higher-order gradients: the
    backward of an inner one is recorded by the outer ones (those that started recording
    earlier), so ``x.grad`` can itself be differentiated::

        with gm_outer:
            with gm_inner:
                gm_inner.backward(f(x))      # x.grad = f'(x), recorded by gm_outer
            gm_outer.backward(x.grad)        # x.grad += f''(x)

    ``gm1 | gm2`` is a `GradManagerGroup`: its members record together and do not see each
    other's backward.
    """

    def __init__(self):
        self._attached = {}  # id(tensor) -> (weakref to tensor, [callbacks])
        self._recording = False
        self._key = None  # the dispatcher's Key of the current recording
        self._own = ()  # (self._key,)
        self._joined = set()  # ids of intermediate nodes attached while recording: leaves here
        # id(tensor) -> its graph entry when this recording started tracking it: an in-place op
        # during the recording (`p[i] = v`, F.scatter, `+=`) rebinds the tensor to the op's
        # output, but upstream still differentiates w.r.t. the value that was attached
        self._entries = {}
        # (id(node), index) of each attached tensor's entry -> (node, weakref, callbacks), made
        # by record() for backward; None when an attach or detach while recording changed it
        self._wanted = None
        self._kept = []  # outputs to backpropagate from besides y (see _keep_for_backward)
        self._after_backward_callbacks = []
        # an integer tensor was attached (by Grad.wrt; recomputed by detach); while such a
        # GradManager records, the dispatcher lets integer values carry gradients (_int_on)
        self._has_int = False
        self._int_on = False
        # a complex tensor was attached (set by attach, recomputed by detach): each recording
        # marks its key as tracking a complex value (dispatch.note_complex)
        self._has_complex = False

    def attach(self, tensors, callbacks=None):
        """Attach tensors (one, or an iterable) so that backward writes their ``.grad``.

        Float and complex tensors can be attached; a complex tensor's gradient is PyTorch's,
        ``dL/dx + i dL/dy`` for ``z = x + iy``. An integer tensor is refused, as upstream's
        GradManager refuses it (upstream's lower-level ``Grad().wrt`` gives integer gradients,
        and so does this fork's ``megengine.core.autodiff.grad.Grad``).

        ``callbacks``: a callable or a list of them, each ``cb(tensor, grad) -> grad``, run in
        order on the gradient before it is accumulated into ``tensor.grad``. A callback that
        returns None drops the gradient: the callbacks after it are still called, given None
        (as upstream's), and unless one of them returns a Tensor, ``.grad`` is left as it is
        (as upstream, which sets a missing ``.grad`` to the None the callbacks returned).
        Attaching a tensor again adds its callbacks after the ones it has; while recording,
        a tensor this recording already differentiates keeps its gradient the one of the value
        it had then (in-place writes since do not move it). An intermediate attached while
        recording gets the gradient of the ops made after the attach, as upstream's (those made
        before still carry theirs to what it was computed from).

        Tensors' callbacks run in the order their gradients become complete, as upstream's and
        torch's hooks: the last op of the forward pass hands out its gradients first, a tensor's
        gradient is complete once the first op that used it has run backward, and one op's
        inputs come in input order (a model's last layer first; a linear or convolution layer's
        bias before its weight, as upstream adds the bias after the product).
        """
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            return dispatch._trace_hook.event(GradManager.attach, self, tensors, callbacks)
        if isinstance(tensors, Tensor):
            tensors = [tensors]
        tensors = list(tensors)
        for t in tensors:
            if not isinstance(t, Tensor):
                raise AttachError(
                    f"GradManager.attach: expected Tensors, got {type(t).__name__}"
                )
            if t.dtype.kind not in "fc":
                raise AttachError(
                    f"GradManager.attach: only float (and complex) tensors can be attached to "
                    f"get gradients, got dtype {t.dtype} and shape {t.shape}; attach a float "
                    "copy (x.astype('float32')) instead"
                )
        return self._attach(tensors, callbacks)

    def _attach(self, tensors, callbacks):
        """`attach` past its checks of the tensors (`Grad.wrt` attaches integer ones too)."""
        if callbacks is None:
            callbacks = []
        elif callable(callbacks):
            callbacks = [callbacks]
        else:
            callbacks = list(callbacks) if isinstance(callbacks, Iterable) else [callbacks]
            if not all(callable(c) for c in callbacks):
                raise TypeError("GradManager.attach: callbacks must be a callable cb(tensor, "
                                "grad) or a list of them, got "
                                + ", ".join(type(c).__name__ for c in callbacks
                                            if not callable(c)))
        for t in tensors:
            kind = t.dtype.kind
            if kind == "c":  # its ops take the dispatcher's complex-aware branch
                self._has_complex = True
            elif kind != "f":  # from Grad.wrt: upstream's Grad gives integer gradients
                self._has_int = True
            entry = self._attached.get(id(t))
            if entry is None or entry[0]() is not t:
                self._attached[id(t)] = (weakref.ref(t, self._forget(id(t))), list(callbacks))
            else:
                entry[1].extend(callbacks)
                if id(t) in self._entries:
                    # attached again while this recording already differentiates it: more
                    # callbacks only. Its gradient stays the one of the value it had when
                    # first wanted (upstream 1.13 measured), not of what in-place writes
                    # (`x *= y`, `x[...] = v`) made of it since.
                    continue
            if self._recording:
                self._light(t)
        if self._has_int and self._recording and not self._int_on:
            self._int_on = True
            dispatch.int_gradients(+1)
        return self

    def _light(self, t):
        if t.dtype.kind == "c":
            dispatch.note_complex(self._own)
        joined = _light(t, self._key, self._own, mid=True)
        if joined is not None:
            self._joined.add(id(joined))
        self._entries[id(t)] = t._node
        self._wanted = None  # backward builds it anew

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
        self._wanted = None  # backward builds it anew
        kinds = {t.dtype.kind for t in self.attached_tensors()}
        self._has_complex = "c" in kinds
        self._has_int = bool(kinds - {"f", "c"})
        return self

    def is_attached(self, t):
        entry = self._attached.get(id(t))
        return entry is not None and entry[0]() is t

    # ----- recording -----
    def record(self):
        """Start recording the ops on attached tensors."""
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            return dispatch._trace_hook.event(GradManager.record, self)
        return self._record(None)

    def _record(self, level):
        if self._recording:
            raise RuntimeError("GradManager.record: already recording")
        self._recording = True
        self._key = dispatch.open_key(level)
        _recording_managers.append(self)
        self._own = (self._key,)
        if self._has_int:
            self._int_on = True
            dispatch.int_gradients(+1)
        if self._has_complex:
            dispatch.note_complex(self._own)
        key, own, joined, entries = self._key, self._own, self._joined, self._entries
        self._wanted = wanted = {}
        for k, (r, callbacks) in self._attached.items():
            t = r()
            if t is None:
                continue
            entry = t._node
            if entry is not None and type(entry[0]) is Leaf:
                leaf = entry[0]
                ks = leaf.keys
                if not ks or (len(ks) == 1 and not ks[0].alive):
                    # the common case of _light inline: a parameter's leaf from the last step
                    data = t._data
                    leaf.out_meta = ((data.shape, data.dtype),)
                    leaf.keys = own
                    entries[k] = entry
                    wanted[(id(leaf), entry[1])] = (leaf, r, callbacks)
                    continue
            node = _light(t, key, own)
            if node is not None:
                joined.add(id(node))
            entries[k] = entry = t._node
            wanted[(id(entry[0]), entry[1])] = (entry[0], r, callbacks)
        key.mark = dispatch._next_seq()  # the leaves made above hold no arrays (holds_arrays)
        return self

    def release(self):
        """Stop recording and drop the graph recorded so far."""
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            return dispatch._trace_hook.event(GradManager.release, self)
        if self._recording:
            self._recording = False
            dispatch.close_key(self._key)
            if self._int_on:
                self._int_on = False
                dispatch.int_gradients(-1)
            self._key, self._own = None, ()
            self._joined = set()
            self._entries = {}
            self._wanted = None
            _recording_managers.remove(self)
            self._kept = []

    def __enter__(self):
        self.record()
        return self

    def __exit__(self, *exc):
        self.release()

    def __or__(self, other):
        if isinstance(other, GradManager):
            return GradManagerGroup([self, other])
        return NotImplemented

    __ror__ = __or__

    def _register_after_backward_callback(self, callback):
        """Run ``callback()`` in every backward, after the gradient callbacks of all tensors
        and before the gradients are accumulated into ``.grad``."""
        self._after_backward_callbacks.append(callback)
        return self

    # ----- backward -----
    def backward(self, y=None, dy=None):
        """Accumulate d(y)/d(attached) into each attached tensor's ``.grad``, then release.

        ``y``: a tensor or a list of them; ``dy``: matching output gradients (default ones).
        While a GradManager that started recording earlier still records, the gradients are
        computed with recorded ops, so that GradManager can differentiate them again.
        ``y`` may be omitted when only outputs kept by distributed ops are differentiated
        (the sending side of ``remote_send``); with none kept, as upstream's, it differentiates
        nothing and only releases (``y=[]`` alike).
        """
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            return dispatch._trace_hook.event(GradManager.backward, self, y, dy)
        if not self._recording:
            raise RuntimeError(
                "GradManager.backward: not recording; compute y inside `with gm:` or after "
                "gm.record()"
            )
        key = self._key
        visited = []
        hidden = ()
        # several GPUs: the output gradients, the callbacks and the accumulation into .grad
        # allocate on the current device, so each tensor's is made current (None: one GPU/CPU)
        scope = dispatch.device_scope()
        try:
            outputs = None if y is None else _pair_outputs(y, dy, "GradManager.backward", scope)
        except BaseException:
            # a bad y or dy leaves the recording as it was, so backward can be called again
            # with correct ones (torch checks them before it frees its graph; upstream 1.13
            # measured: the recording was gone, "no computation history")
            if scope is not None:
                scope.close()
            raise
        try:
            ys, dys, given = [], [], []
            # Outputs kept by distributed ops join y as roots. The backward runs ops in the
            # reverse of their forward order (dispatch._graph_order), so the collectives'
            # backward passes (sends, receives) run in the reverse of their forward order on
            # every rank, as upstream's do; otherwise a rank could wait to receive a gradient
            # while its peer waits for one from it.
            for t in self._kept:
                if _tracked(t):
                    if scope is not None:
                        scope.enter(t._device)
                    zeros = get_array_module(t._device).zeros(t.shape, t.dtype)
                    ys.append(t)
                    dys.append(zeros)
                    given.append(zeros)
            if outputs is not None:
                for mine, theirs in zip((ys, dys, given), outputs):
                    mine.extend(theirs)
            wanted = self._wanted  # made by record() (holding the nodes: their ids stay theirs)
            if wanted is None:  # tensors were attached or detached while recording
                wanted = {}
                for k, (r, callbacks) in self._attached.items():
                    t = r()
                    entry = self._entries.get(k, t._node) if t is not None else None
                    if entry is not None:
                        wanted[(id(entry[0]), entry[1])] = (entry[0], r, callbacks)
            key.alive = False  # this recording is consumed by its own backward
            hidden = dispatch.suspend_from(key.level)  # later GradManagers don't see it
            graph = dispatch.any_alive()  # an earlier GradManager records this backward
            if graph:
                dys = [d if isinstance(d, Tensor) else Tensor._wrap(d, t._device)
                       for d, t in zip(given, ys)]
            found = dispatch.run_backward(ys, dys, wanted, free_graph=False, key=key,
                                          graph=graph, visited=visited, stop=self._joined,
                                          free_early=not graph)
            # No two .grad share a byte, nor share one with an output gradient the caller gave
            # (in-place grad edits such as clip_grad_norm would otherwise apply twice).
            claimed = {}
            for d in dys:
                _claim(d._data if isinstance(d, Tensor) else d, claimed)
            ready = []  # (tensor, gradient, its shape before callbacks made it, or None)
            fresh = dispatch.fresh_registry()
            called = []  # (index in ready, callbacks) of the tensors with callbacks
            for key_, g in found.items():
                _, r, callbacks = wanted[key_]
                t = r()
                if t is None:  # the tensor died while recording: nothing to deliver to
                    continue
                if scope is not None:
                    scope.enter(t._device)
                if (not callbacks and type(g) is np.ndarray and g.dtype == t._data.dtype
                        and t._format == "default"):
                    # the common case inline: a CPU gradient, no callbacks, no format
                    # label (_exclusive_grad passes the label on); an array that
                    # owns its memory, unclaimed, writable and C-contiguous is kept as is
                    # (what _exclusive decides, without its call), and so is a view of foreign
                    # memory that an op declared fresh (a torch gradient from the bridge's
                    # hand_over: fresh_owner's test inline)
                    base = g.base
                    if (base is None or type(base) is not np.ndarray
                            and (ref := fresh.get(id(g))) is not None and ref() is g) \
                            and id(g) not in claimed:
                        flags = g.flags
                        if flags.writeable and flags.c_contiguous:
                            claimed[id(g)] = g
                            ready.append((t, Tensor._wrap(g, t._device), None))
                            continue
                    ready.append((t, Tensor._wrap(_exclusive(g, claimed), t._device), None))
                    continue
                if callbacks:
                    called.append((len(ready), callbacks))
                ready.append((t, _exclusive_grad(t, g, claimed), None))
            # Callbacks run once every gradient is exclusive: a callback that edits its gradient
            # in place must not reach another tensor's gradient that is still to be copied out
            # of the same memory (y = a + b hands a and b one array).
            global _backwarding
            _backwarding = self
            try:
                for i, callbacks in called:
                    t, grad, _ = ready[i]
                    if scope is not None:
                        scope.enter(t._device)
                    ready[i] = (t, _run_callbacks(t, grad, callbacks), grad._data.shape)
                for callback in self._after_backward_callbacks:
                    callback()
            finally:
                _backwarding = None
            if called:
                ready = [entry for entry in ready if entry[1] is not None]  # dropped ones
            for t, grad, kept in ready:  # before any .grad changes
                if kept is not None or t.grad is not None:  # (else nothing to refuse)
                    _check_grad_slot(t, grad, kept)
            for t, grad, kept in ready:
                if kept is not None:  # a callback may keep (or share) the Tensor it returned
                    grad = _own_tensor(grad)
                if t.grad is None:  # the common case inline: the first gradient of a step
                    t.grad = grad
                    continue
                if scope is not None:
                    scope.enter(t._device)
                _add_grad(t, grad)
        finally:
            if scope is not None:
                scope.close()  # the caller's current device again
            dispatch.forget_fresh_gradients()
            dispatch.resume(hidden)
            self.release()
            if dispatch._active:  # what no other live recording tracks is freed now
                for node in visited:
                    if not dispatch._alive(node.keys):
                        node.free()
            else:
                for node in visited:
                    if node.op is not None:  # most were freed as their backward ran
                        node.free()


class GradManagerGroup:
    """GradManagers that record together (``gm1 | gm2``): each one's backward is hidden from
    the others, whatever order they backward in (upstream's group semantics)."""

    def __init__(self, gms):
        self._gms = list(gms)
        for gm in self._gms:
            if not isinstance(gm, GradManager):
                raise TypeError(f"GradManagerGroup: expected GradManagers, got {type(gm).__name__}")

    def merge_with(self, other):
        if isinstance(other, GradManager):
            other = GradManagerGroup([other])
        elif not isinstance(other, GradManagerGroup):
            return NotImplemented
        return GradManagerGroup([*self._gms, *other._gms])

    __or__ = merge_with
    __ror__ = merge_with

    def __enter__(self):
        if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
            dispatch._trace_hook.event(GradManagerGroup.record, self)
        else:
            self.record()
        return self

    def __exit__(self, *exc):
        if dispatch._trace_hook is not None:
            dispatch._trace_hook.event(GradManagerGroup.release, self)
        else:
            self.release()

    def record(self):
        """Start all members recording, at one level (what the ``with`` block does)."""
        level = dispatch.new_level()
        started = []
        try:
            for gm in self._gms:
                gm._record(level)
                started.append(gm)
        except BaseException:
            for gm in reversed(started):
                gm.release()
            raise
        return self

    def release(self):
        for gm in reversed(self._gms):
            gm.release()


def _pair_outputs(y, dy, what, scope=None):
    """(tensors, output-gradient arrays, what the caller gave per output: Tensor/array/None).
    ``scope``: a dispatch.DeviceScope that makes each output's device current (several GPUs)."""
    if dy is None and isinstance(y, Tensor) and y._data.dtype.kind != "c":
        # a loss, the usual case: its gradient is one
        if scope is not None:
            scope.enter(y._device)
        data = y._data
        if type(data) is np.ndarray and not data.ndim:  # a scalar loss on the CPU: one C call
            a = np.array(1, data.dtype)
        else:
            a = get_array_module(y._device).ones(data.shape, data.dtype)
        return [y], [a], [a]
    ys = list(y) if isinstance(y, (list, tuple)) else [y]
    if dy is None:
        dys = [None] * len(ys)
    else:
        dys = list(dy) if isinstance(dy, (list, tuple)) else [dy]
    if len(dys) != len(ys):
        # (an ArgumentError: upstream's RuntimeError too)
        raise ArgumentError(f"{what}: got {len(ys)} outputs but {len(dys)} output gradients")
    arrays, given = [], []
    for t, d in zip(ys, dys):
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}: expected Tensors to differentiate, got {type(t).__name__}")
        xp = get_array_module(t._device)
        if scope is not None:
            scope.enter(t._device)
        if d is None:
            if t.dtype.kind == "c":
                raise ValueError(
                    f"{what}: cannot differentiate a complex output ({t.dtype}) without an "
                    "output gradient: a loss must be real. Differentiate a real value of it "
                    "(F.real(y), F.abs(y), ...), or pass dy")
            a = xp.ones(t.shape, t.dtype)
            given.append(a)
        else:
            if isinstance(d, Tensor) and d._device != t._device:  # comes over to the output's
                d = Tensor._wrap(move_array(d._data, t._device), t._device)  # device
            try:
                a = d._data if isinstance(d, Tensor) else xp.asarray(d, t.dtype)
            except (TypeError, ValueError):
                raise TypeError(f"{what}: an output gradient must be a Tensor, an array or a "
                                f"number, got {type(d).__name__}") from None
            reshaped = a.shape != t.shape
            if reshaped and a.size == t.size:
                a = a.reshape(t.shape)  # upstream takes [1.0] for a 0-d loss (1.0-era: (1,))
            elif reshaped:  # upstream broadcasts dy to y's shape (a scalar, a row)
                try:
                    a = xp.ascontiguousarray(xp.broadcast_to(a, t.shape))
                except ValueError:
                    raise ValueError(
                        f"{what}: output gradient of shape {a.shape} for an output of shape "
                        f"{t.shape}; it must have the output's shape or broadcast to it"
                    ) from None
            a = a.astype(t.dtype, copy=False)
            given.append(d if isinstance(d, Tensor) and d.dtype == t.dtype and not reshaped
                         else a)
        arrays.append(a)
    return ys, arrays, given


def _owner(a):
    """The array that owns ``a``'s memory, or None when it is foreign (e.g. torch's)."""
    base = getattr(a, "base", None)
    if base is None:
        owner = a
    else:
        owner = base if type(base) is type(a) and base.base is None else None
    if (owner is not None and type(owner) is not np.ndarray
            and dispatch.foreign_memory(owner) is not None):
        return None  # a CuPy view of torch memory: its base is None like an array of CuPy's own
    return owner


# The memory backward hands to .grad is claimed as it goes (``claimed``: id(owner) -> entry),
# so that no two .grad, nor a .grad and an output gradient the caller gave, share a byte. An
# entry is the owner array itself (all of its memory is claimed), one view of it (that view's
# bytes), or a `_ClaimedBytes` (the bytes of several views). Judging views by their bytes, not
# by their owner, lets the slices of one gradient buffer become several .grad uncopied (the
# input gradients of stack, and of concat along its first axis, are slices of the output's
# gradient; torch keeps such slices as .grad too). The bytes are compared only once a second
# view of one owner comes, so a single view (a gradient reshaped to its parameter's shape)
# costs nothing more; a second view smaller than _COMPARED_FROM bytes is copied instead, which
# costs less than reading the address ranges (`dispatch._extent`, ~3 us a view, measured
# against ~1.2 us for a copy of 32 KiB and ~3.2 us for 128 KiB on this project's machines).
_COMPARED_FROM = 1 << 16


class _ClaimedBytes(list):
    """The byte ranges ``(first, end)`` claimed in one owner's memory, sorted and disjoint;
    ``owner`` keeps the owner alive, so that its id is not reused meanwhile."""

    __slots__ = ("owner",)


def _claim(a, claimed):
    owner = _owner(a)
    if owner is not None:
        claimed[id(owner)] = owner  # all of it; kept alive, so its id is not reused meanwhile


def _exclusive(g, claimed):
    """``g``, or a copy of it when some of its bytes are claimed already (another .grad, an
    output gradient the caller gave) or its memory is foreign, or when it is a read-only or
    strided view."""
    base = g.base  # inline _owner: this runs once per parameter per step
    owner = g if base is None else (base if type(base) is type(g) and base.base is None else None)
    if type(g) is np.ndarray:
        if owner is None and dispatch._fresh_owners:  # foreign memory: not copied when the op
            owner = dispatch.fresh_owner(g)  # that made it declared it fresh
    else:
        if owner is not None and dispatch.foreign_memory(owner) is not None:
            owner = None  # CuPy: torch's memory through the bridge (see _owner)
        if owner is None:
            owner = dispatch.fresh_owner(g)
    flags = g.flags  # a new object per access: read once
    if owner is not None and getattr(flags, "writeable", True) and flags.c_contiguous:
        held = claimed.get(id(owner))
        if held is None:
            claimed[id(owner)] = g  # the owner itself (all of it), or one view's bytes
            return g
        if (held is not owner and g is not owner and g.nbytes >= _COMPARED_FROM
                and _claim_bytes(g, owner, held, claimed)):
            return g
    g = g.copy()
    claimed[id(g)] = g
    return g


def _claim_bytes(view, owner, held, claimed):
    """Claim the bytes of ``view`` (a C-contiguous view of ``owner``, so its bytes are one range)
    unless a claimed view of ``owner`` (``held``: one view, or `_ClaimedBytes`) shares one of
    them; returns whether it did."""
    if type(held) is not _ClaimedBytes:  # a second view of this owner: the first one's range
        first, held = held, _ClaimedBytes()
        held.owner = owner
        span = dispatch._extent(first)
        if span[0] != span[1]:  # (an empty first view shares no byte: not kept, so that the
            held.append(span)  # neighbours of a range are the ones that can overlap it)
        claimed[id(owner)] = held
    lo, hi = span = dispatch._extent(view)  # (not empty: _exclusive compares large views)
    i = bisect.bisect(held, span)
    if (i and held[i - 1][1] > lo) or (i < len(held) and held[i][0] < hi):
        return False
    held.insert(i, span)
    return True


def _exclusive_grad(t, g, claimed):
    """The Tensor of gradient ``g`` that ``t`` receives: made exclusive (`_exclusive`), of
    ``t``'s dtype and with its format label."""
    if isinstance(g, Tensor):  # a recorded gradient (higher order): copies stay recorded
        if g.dtype != t.dtype:
            g = g.astype(t.dtype)
        if _exclusive(g._data, claimed) is not g._data:
            g = dispatch.apply(Copy(g._device), g)
            _claim(g._data, claimed)
        grad = g
    else:
        if g.dtype != t.dtype:
            g = g.astype(t.dtype)
        grad = Tensor._wrap(_exclusive(g, claimed), t._device)
    if t._format != "default":  # upstream: a gradient carries its tensor's format label
        grad._format = t._format
    return grad


def _run_callbacks(t, grad, callbacks):
    """``grad`` passed through ``t``'s callbacks (None when the last callback returned None)."""
    capture = _callback_capture
    for cb in callbacks:
        grad = cb(t, grad) if capture is None else capture(cb, t, grad)
        if grad is None:  # the callback dropped this gradient; the next ones still run and
            continue  # are given None (upstream's loop: grad = cb(t, grad) for each)
        if not isinstance(grad, Tensor):
            raise TypeError(
                f"a GradManager callback must return a Tensor (or None to drop the gradient), "
                f"got {type(grad).__name__}"
            )
    return grad


def _own_tensor(grad):
    """A new Tensor object for ``grad``'s value (and graph entry): the ``.grad`` that later
    backward passes accumulate into (see `_add_grad`) is no other holder's object. Made once the
    after-backward callbacks ran: an all-reduce callback gives its Tensor its value then."""
    own = Tensor._wrap(grad._data, grad._device)
    own._node, own._format = grad._node, grad._format
    return own


def _check_grad_slot(t, grad, kept):
    """Refuse, before backward changes any ``.grad``, a gradient a callback reshaped (``kept``:
    the shape it had before the callbacks, None when none ran) and a ``.grad`` the user set
    that the gradient cannot be added to (torch refuses both; upstream 1.13 measured: the other
    tensors' ``.grad`` had grown when it raised, and a reshaped gradient became ``.grad`` as it
    was). The gradient has the shape of the value that was differentiated, which is ``t``'s
    unless the program wrote a value of another shape into ``t`` (``t[...] = v``) since."""
    shape = grad._data.shape
    if kept is not None and shape != kept:
        raise ValueError(
            f"GradManager.backward: a callback returned a gradient of shape {grad.shape} for a "
            f"gradient of shape {kept}; callbacks must keep the gradient's shape (no .grad "
            "was changed)")
    check_grad_is_tensor(t, "GradManager.backward", "no .grad was changed")
    held = t.grad
    if held is None:
        return
    if held._data.shape != shape:
        raise ValueError(
            f"GradManager.backward: the .grad of a tensor of shape {t.shape} has shape "
            f"{held.shape}, so its gradient of shape {grad.shape} cannot be added to it; set "
            "it to None or to a Tensor of the gradient's shape (no .grad was changed)")


def _add_grad(t, grad):
    """Upstream's ``t.grad += grad``: the ``.grad`` object takes the sum, so a user holding it
    (or who set it) sees it grow. The sum is a new array: another tensor sharing the old one (a
    view, a bucket of the all-reduce, a tensor the gradient was made from) keeps its values."""
    held = t.grad
    if held is None:
        t.grad = grad
        return
    if _tracked(held) or _tracked(grad) or held.dtype != grad.dtype:
        # recorded, so an outer GradManager sees the sum; a .grad the user set to another
        # dtype (int32) meets the gradient by the engine's rules (float32), as upstream's
        total = held + grad
    else:
        # (float16 on ATen's vectorised loop, numpy's values: `dispatch._add_arrays`)
        total = Tensor._wrap(dispatch._add_arrays(held._data, grad._data), t._device)
    if held._pinned_storage:  # storage lent by torch (a PyTorchModule's tensor) stays its own
        held._reset(total)
    else:
        held._data, held._node = total._data, total._node
    held._format = grad._format


def _tracked(t):
    return t._node is not None and t._node[0].live


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
    scope = dispatch.device_scope()  # several GPUs: allocate on each tensor's device
    try:
        ys, dys, _ = _pair_outputs(y, None, "grad", scope)
        try:
            found = dispatch.run_backward(ys, dys, wanted, free_graph=False)
        finally:
            dispatch.forget_fresh_gradients()  # the copies below do not need them
        out = []
        for t in xs:
            if scope is not None:
                scope.enter(t._device)
            g = found.get((id(t._node[0]), t._node[1]))
            xp = get_array_module(t._device)
            out.append(Tensor._wrap(g.copy() if g is not None else xp.zeros(t.shape, t.dtype),
                                    t._device))
    finally:
        if scope is not None:
            scope.close()
    return out if isinstance(x, (list, tuple)) else out[0]
