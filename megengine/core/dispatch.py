"""The one op dispatcher: `apply(op, *tensors)` runs an op's forward and records it for autodiff.

An op is an object with ``forward(*arrays)`` and ``backward(*output_grads)`` on raw arrays
(numpy, or CuPy on CUDA devices). ``apply`` creates one op instance per call, so an op may keep
what its backward needs on ``self``. Before ``forward`` runs, ``op.needs_input_grad`` is set to a
tuple of bools: which inputs the recorded graph wants gradients for (all False when nothing is
being recorded), so expensive ops can skip work nobody will use.

``backward`` receives one gradient per output (zeros are filled in for outputs nobody used) and
returns one gradient per input (a tuple, or a single array for a one-input op); ``None`` means
"no gradient" (integer inputs, indices, ...).

Recording: each recording GradManager holds a `Key`. An op whose inputs include a tensor
tracked by a live key (attached, or computed from one) gets a graph `Node` that remembers the
live keys of its inputs; its outputs are tracked by those keys. Nothing else is recorded, so
inference costs no graph.

Complex values: a gradient passes through a complex value (a complex output, or a complex input
that carries a gradient) only by an op's complex rule, in PyTorch's convention (the gradient of a
real loss with respect to ``z = x + iy`` is ``dL/dx + i dL/dy``): ``backward_complex``, or the
``holomorphic`` flag (see `Op`). Such a node's op is wrapped in a `_ComplexGrad`, which also hands
real inputs the real part of their gradient; an op with no rule gets a wrapper that raises when
a gradient reaches it. Nothing of this runs for float values: the dispatcher looks at complex
dtypes only past its float checks, and takes its general branch only while a recording tracks a
complex value (`_wide`).

Higher-order gradients: an op may also define ``grad_graph(inputs, outputs, output_grads)``,
its backward written with differentiable Tensor functions. A backward runs on raw arrays (the
fast path) unless another GradManager that started recording earlier still records: then the
nodes that GradManager tracks run ``grad_graph`` so that the gradient computation is itself
recorded. For that a node keeps its input and output arrays, but only when more than one
GradManager recorded at forward time, so single-level training keeps no extra memory.

Devices: CuPy allocates and launches kernels on the calling thread's *current* CUDA device, not
on the device of the arrays it is given. So with more than one GPU, ``apply`` makes the op's
device current while its forward runs, the graph ``Node`` remembers that device, and each
node's device is current while its backward runs (switching only when it changes, restoring the
caller's device afterwards, also when an exception escapes); GradManager and the optimizers do
the same through `device_scope`. The switching is done by a *switcher* that
``megengine.device`` installs when it finds more than one GPU; with one GPU (the current device
can only be 0) or none there is no switcher and nothing of this costs more than one ``is None``.
"""
import weakref
from itertools import count as _count
from operator import attrgetter as _attrgetter

import numpy as np

from .. import device as _device_mod

__all__ = ["Op", "apply", "Node", "Key", "is_recording", "run_backward", "device_scope",
           "on_device", "set_device_switcher"]

_recording = 0  # how many GradManagers are recording right now
_active = []  # their Keys, in the order they started
_levels = [0]  # the last level handed out; a GradManagerGroup's members share one
# megengine.jit.trace: while a traced function records or is checked, every apply goes through
# this hook (see megengine/jit/tracing.py), state changes call its ``event`` and Tensor.numpy
# calls its ``read``; None otherwise, so untraced code pays one global read.
_trace_hook = None
# megengine.traced_module: while it records, ``hook(tensor, attributes)`` after
# ``tensor.__dict__ = attributes`` (the tensor then stands for the one it adopted); else None.
_adopt_hook = None
# megengine.utils.profiler / tensor_sanity_check: while a Profiler or a TensorSanityCheck runs,
# every apply goes through this hook (it clears itself, applies, notes the op, reinstalls itself);
# None otherwise: one more global read per apply.
_profile_hook = None
# megengine.utils.network: while VarNodes of a loaded program exist, every apply goes through
# this hook first; it builds graph nodes for ops on VarNodes and returns NotImplemented for
# others (see megengine/utils/network_node.py). None otherwise: one more global read per apply.
_symbolic_hook = None
# megengine.core.format: once any tensor carries a format label ("nhwc", "nchw"), every apply
# goes through this hook, which labels the op's outputs by upstream's rules; None until then.
_format_hook = None
# megengine.amp.autocast: while it is on, the inputs of an op whose class sets ``autocast`` pass
# through this hook first, which casts them by upstream's rules (see megengine/core/amp.py);
# None otherwise: one more global read per apply.
_autocast_hook = None
# How many recordings have an integer tensor attached. Upstream differentiates integer tensors
# too (an int32 gradient through int32 ops); while this is 0 only float values carry gradients,
# so ordinary recording pays one global read for it, on recorded ops only.
_int_grads = 0
# How many recordings track a complex value (a Key's ``complex``); set while a complex output of
# a recorded op or an attached complex tensor is tracked, until that recording ends.
_complex_grads = 0
# _int_grads + _complex_grads: while nonzero, recorded ops take `_apply_wide` (one global read
# on the recorded path for both)
_wide = 0
_NO_GRAD = {}  # input count -> all-False tuple, so the fast path allocates nothing
# The current-device switcher (``current() -> int``, ``use(index)``), or None when no switching
# is needed (no GPU, or one). Set by megengine.device through `set_device_switcher`; tests
# install fakes the same way.
_switcher = None
_GPU_INDEX = {}  # "gpu1" -> 1, parsed once per name


def set_device_switcher(switcher):
    """Install the object that reads and sets the current CUDA device (None: never switch);
    returns the previous one."""
    global _switcher
    previous, _switcher = _switcher, switcher
    return previous


_device_mod._on_switcher_change(set_device_switcher)


def _gpu_index(device):
    index = _GPU_INDEX.get(device)
    if index is None:
        index = _GPU_INDEX[device] = int(device[3:])
    return index


class DeviceScope:
    """Makes the devices of a sequence of steps current in turn (a backward pass, an optimizer
    step): it switches only when the device changes, asks nothing for CPU devices, and `close`
    gives the caller back the device that was current before the first switch."""

    __slots__ = ("_switcher", "_previous", "_current")

    def __init__(self, switcher):
        self._switcher = switcher
        self._previous = self._current = None  # read lazily: CPU-only work never asks

    def enter(self, device):
        if device is None or device[0] != "g":
            return  # a CPU array: no current device matters
        index = _gpu_index(device)
        current = self._current
        if current is None:
            current = self._previous = self._current = self._switcher.current()
        if index != current:
            self._switcher.use(index)
            self._current = index

    def close(self):
        if self._current is not None and self._current != self._previous:
            self._switcher.use(self._previous)
        self._previous = self._current = None


def device_scope():
    """A `DeviceScope` when device switching is needed (more than one GPU), else None."""
    return None if _switcher is None else DeviceScope(_switcher)


class on_device:
    """``with on_device("gpu1"):`` makes that GPU current for the block (nothing for CPU
    devices or when no switching is needed); the caller's device comes back afterwards."""

    __slots__ = ("_scope", "_device")

    def __init__(self, device):
        self._scope = device_scope()
        self._device = device

    def __enter__(self):
        if self._scope is not None:
            self._scope.enter(self._device)
        return self

    def __exit__(self, *exc):
        if self._scope is not None:
            self._scope.close()


def _forward_on(device, op, arrays):
    """``op.forward`` with GPU ``device`` current (the multi-GPU path of `apply`)."""
    switcher = _switcher
    index = _gpu_index(device)
    previous = switcher.current()
    if previous == index:
        return op.forward(*arrays)
    switcher.use(index)
    try:
        return op.forward(*arrays)
    finally:
        switcher.use(previous)


class Op:
    """Base class of every differentiable computation. Subclasses define forward and backward."""

    needs_input_grad = ()
    out_device = None  # set by an op whose output lives elsewhere than its inputs (Copy)
    # The order in which this op hands its inputs their gradients (input indices), when it is
    # not input order: a fused op that stands for several of upstream's ops (linear is matmul,
    # then + bias) sets it so that gradient callbacks run in upstream's order (see
    # `_graph_order`); None: input order.
    grad_order = None
    # True for an op whose output shapes depend on its inputs' values, not only on their shapes
    # and the op's parameters (``cond_take``, a boolean mask index, ``nms``): a traced program
    # lets those shapes change from call to call (see `megengine.jit`)
    data_shaped = False
    # Complex values on the gradient path (see `_ComplexGrad`). An op has a complex rule when it
    # defines ``backward_complex(*output_grads)`` giving PyTorch's gradients (dL/dx + i dL/dy for
    # an input z = x + iy), or when ``holomorphic`` is True: its ``backward`` is the chain rule
    # ``g * f'(z)`` of a complex-differentiable ``f`` (a linear map with real coefficients is
    # one), so ``conj(backward(conj(g)))`` is that gradient. Neither: a gradient that reaches the
    # op through a complex value raises.
    holomorphic = False
    # For an op that keeps arrays its backward may not read: the arrays its backward reads for
    # the gradients asked for (``needs_input_grad``), which a write into pinned memory must not
    # have changed (`_refuse_stale_pinned`), as torch's saved tensors: a method
    # ``backward_reads()`` giving them, or a tuple of the names of the attributes holding them
    # (``("y",)``: exp's backward reads its output, not its input; ``()``: add's and sub's
    # read only shapes, and a write into a pinned input cannot change their gradients); None:
    # all it keeps
    backward_reads = None
    # Whether megengine.amp.autocast casts the ops of this op's recorded gradient
    # (``grad_graph``). Upstream runs a built-in op's gradient as one op its autocast has no
    # rule for (upstream 1.13 measured: under autocast matinv's first- and second-order
    # gradients are float32's bit for bit), as the raw backward computes it here, so
    # ``grad_graph`` runs with autocast off; a user's `autodiff.Function` sets True: its
    # backward is Python code whose ops upstream's autocast casts (measured: ``g @ w.T`` of
    # float32 tensors in it gives float16)
    grad_autocast = False
    # How megengine.amp.autocast casts this op's inputs (upstream's dtype-promote rules): "high",
    # every input to the high precision dtype (float32; upstream's exp, log, true division, ...);
    # "low", float inputs to the low precision dtype (float16; matrix products); None: untouched.
    autocast = None
    # float16 on the CPU: True for an op whose float16 numpy inputs compute in float32, forward
    # and backward, each result rounded to float16 once, as torch's CPU kernels compute
    # float16 (numpy's float16 loops convert one element at a time, 10-100x a float32 pass, and
    # a function of several passes rounds after each). Which calls do is `computes_half`'s
    # rule; the wrappers that `__init_subclass__` puts around the class's forward and backward
    # do the rest (`_half_forward`), wherever an op is called from: `apply`, a jit replay, a
    # dumped program's backward. Classes that leave it False get no wrapper and pay nothing.
    half_in_float32 = False
    half_dtypes = None  # the input dtypes of a call that computed float16 in float32 (above)
    # while such a call's forward runs: its inputs as given (float16), for an op whose backward
    # keeps them rather than their float32 copies (maximum and minimum); None after
    half_inputs = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("forward", "backward"):
            method = getattr(cls, name)
            inner = getattr(method, "half_inner", None)
            if cls.half_in_float32 and inner is None:
                wrap = _half_forward if name == "forward" else _half_backward
                setattr(cls, name, wrap(method))
            elif not cls.half_in_float32 and inner is not None:  # a subclass that opts out
                setattr(cls, name, inner)

    def computes_half(self, arrays):
        """Whether this call, with a float16 input among ``arrays``, computes in float32
        (`half_in_float32`): when every input is float16 (an op that promotes mixed dtypes
        computes those in their promoted dtype) and they are numpy arrays, one of
        `functional._aten.HALF_MIN` values or more (`ops.half_operands`; CuPy arrays keep
        their own float16 kernels). An op whose rule differs overrides this."""
        for a in arrays:
            if a.dtype is not FLOAT16:
                return False
        return _half_ops().half_operands(*arrays)

    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, *output_grads):
        raise NotImplementedError(
            f"{type(self).__name__} has no backward: it cannot be differentiated"
        )

    def __repr__(self):
        return type(self).__name__


class Key:
    """One recording of one GradManager: alive from record() until release or backward.

    ``level`` orders recordings: a backward is recorded only by keys of a lower level (the
    GradManagers that started recording earlier), never by later ones nor by the members of
    its own GradManagerGroup, which share its level (upstream's visibility rules).
    """

    __slots__ = ("alive", "level", "complex", "mark", "joined_at", "__weakref__")

    def __init__(self, level):
        self.alive = True
        self.level = level
        self.complex = False  # tracks a complex value: counted in _complex_grads
        self.mark = _next_seq()  # a number after which no node was made yet (holds_arrays)
        # id(node) -> (node, seq) for nodes of other recordings this one took up while
        # recording (GradManager.attach): ops made before seq treated them as constants
        self.joined_at = None

    def join(self, node):
        """Track ``node``, made by another live recording, from now on: its gradient for this
        recording comes from the ops made after this call only (`_backward`)."""
        if self.joined_at is None:
            self.joined_at = {}
        self.joined_at.setdefault(id(node), (node, _next_seq()))


def open_key(level=None):
    """Start a recording; ``level`` None takes a new level (a group passes one it shares)."""
    global _recording
    if level is None:
        level = new_level()
    key = Key(level)
    _active.append(key)
    _recording += 1
    return key


def holds_arrays():
    """Whether an op recorded by an open recording may hold arrays for its backward: a node was
    made since the first open recording started. Code about to write into a tensor's storage in
    place asks (`Tensor._reset`, the optimizers): upstream's values never change, so a recorded
    backward computes with what its forward saw. (Nodes made before that start belong to
    recordings that ended, whose graphs no backward runs.)"""
    if not _active:
        return False
    first = _active[0]
    n = _next_seq()
    if n == first.mark + 1:  # nothing made since the mark: move it past this call's number
        first.mark = n
        return False
    return True


# Engine caches that keep arrays alive from one call to the next (a layer's torch views of its
# weights: `functional._aten.LayerViews`, `functional.rnn.WeightViews`): id(array) -> a weak
# reference to the cache holding it. A write in place into a tensor's array asks whether
# anything else refers to the array (`Tensor._shared`); such a cache is no reason to copy:
# asked, it lets its arrays go (`release_cached`) and makes its views again at the next call
# (~0.4 us a view). One cache per array (an array two layers share, tied weights, is copied
# on write instead: correct, and rare); a live cache holds its arrays, so their ids are theirs,
# and a dying one unregisters them (its ``__del__``).
_cached = {}


def cache_holds(cache, arrays, before=()):
    """``cache`` (with a ``release()`` method) now keeps ``arrays`` and no longer ``before``
    (None entries are skipped)."""
    for a in before:
        if a is not None:
            ref = _cached.get(id(a))
            if ref is not None and ref() is cache:
                del _cached[id(a)]
    if arrays:
        ref = weakref.ref(cache)
        for a in arrays:
            if a is not None:
                _cached[id(a)] = ref


def release_cached(array):
    """Whether an engine cache held ``array``: it lets its arrays go."""
    ref = _cached.get(id(array))
    cache = None if ref is None else ref()
    if cache is None:
        return False
    cache.release()
    return True


# Arrays that are torch's memory (a PyTorchModule mirror's, `pin_root`): id -> weak references
# to the megengine tensors made since whose arrays view that memory (a slice, a reshape, a
# transpose, `detach()`: `_note_view`). A write into the memory in place first gives them
# copies (`keep_values_of_views`): their values are megengine values, which upstream never
# changes. (A plain Parameter moves to new memory instead when viewed, `Tensor._shared`; a
# mirror cannot move.) Empty, and one test per op, without PyTorchModules.
_pinned_roots = {}


def pin_root(array):
    """Register ``array`` (a mirror's) as torch's memory; forgotten when the array dies."""
    key = id(array)
    if key not in _pinned_roots:
        _pinned_roots[key] = []
        try:
            weakref.finalize(array, _pinned_roots.pop, key, None)
        except TypeError:  # an array type without weak references: the entry stays
            pass


def _root_views(a):
    """The list `_pinned_roots` keeps for the registered array ``a`` is or views, else None.
    (numpy's ``base`` of a view of a view is the first array; CuPy's may be the view between,
    so the chain is walked.)"""
    while a is not None:
        views = _pinned_roots.get(id(a))
        if views is not None:
            return views
        a = getattr(a, "base", None)
    return None


def _note_view(t):
    """Remember ``t`` when its array is, or views, an array `pin_root` registered."""
    views = _root_views(t._data)
    if views is None:
        return
    if len(views) >= 64:  # (dead ones go now and then)
        views[:] = [r for r in views if r() is not None]
    views.append(weakref.ref(t))


def keep_values_of_views(array):
    """Before a write into pinned ``array`` in place: each megengine tensor made as a view of it
    (`_note_view`) that still views it takes a copy of its value."""
    views = _pinned_roots.get(id(array))
    if not views:
        return
    for ref in views:
        t = ref()
        if t is None:
            continue
        a = t._data
        base = a
        while base is not None and base is not array:  # (still a view of it?)
            base = getattr(base, "base", None)
        if base is array:
            with on_device(t._device):
                t._data = a.copy()
    views.clear()


# Pinned storage (a PyTorchModule mirror's memory, torch's) written in place while a recorded
# op may hold it: id(array) -> (array, seq of its last such write). Torch's graph checks its
# own saved tensors (version counters); for megengine's ops, a backward looks for one recorded
# before the write that kept that memory (`_refuse_stale_pinned`). Nothing is checked per op:
# the dict is empty unless such a write happened, and it is emptied when no recording is open.
# (One entry per array, the last write's: an op recorded before it saw an overwritten value.)
_pinned_writes = {}


def note_pinned_write(array):
    """A pinned ``array`` was written in place while a recorded op may hold it; the ops
    recorded before now may have kept its old value."""
    _pinned_writes[id(array)] = (array, _next_seq())


def _refuse_stale_pinned(order, key):
    """Raise when an op of this backward (``order``) recorded before a pinned write kept an
    array in that memory: its backward would compute with the new value."""
    for written, seq in _pinned_writes.values():
        lo, hi = _extent(written)
        for node in order:
            op = node.op
            if op is None or node.seq >= seq or (key is not None and key not in node.keys):
                continue
            reads = op.backward_reads
            if reads == ():  # (its recorded backward reads no value either: add, sub)
                continue
            if reads is None:
                kept = list(getattr(op, "__dict__", {}).values())
            elif type(reads) is tuple:
                kept = [getattr(op, name, None) for name in reads]
            else:
                kept = list(reads())
            if node.saved is not None:
                kept.extend(node.saved[0] + node.saved[1])
            for a in kept:
                for a in (a if type(a) in (tuple, list) else (a,)):
                    if type(a) is type(written) or _is_torch_tensor(a):
                        start, end = _extent(a)
                        if start < hi and lo < end:
                            raise RuntimeError(
                                f"{op!r}: a value it saved for this backward was changed in "
                                "place: the memory of a PyTorchModule's parameter or buffer "
                                "(torch's), written after the forward used it and before "
                                "gm.backward. Written by the program (set_value, +=, an "
                                "optimizer's step, load_state_dict): write it before `with gm:` "
                                "or after the backward. Written by the torch module in its own "
                                "forward (nn.Embedding(max_norm=...) renormalises the rows it "
                                "looks up), which torch alone refuses the same way: use the "
                                "parameter only after that forward, or use a copy of it")


def _is_torch_tensor(a):
    """Whether ``a`` is a torch tensor (an op running on ATen's kernels keeps views of its
    arrays as torch tensors), asked without importing torch."""
    return type(a).__module__.startswith("torch") and hasattr(a, "data_ptr")


def _extent(a):
    """(first byte, one past the last byte) of an array's elements: numpy's, CuPy's or a torch
    tensor's."""
    if _is_torch_tensor(a):
        lo = hi = a.data_ptr()
        strides = [s * a.element_size() for s in a.stride()]
    else:
        face = getattr(a, "__array_interface__", None) or a.__cuda_array_interface__
        lo = hi = face["data"][0]
        strides = a.strides
    for n, stride in zip(a.shape, strides):
        if n == 0:
            return lo, lo
        if stride < 0:
            lo += (n - 1) * stride
        else:
            hi += (n - 1) * stride
    return lo, hi + a.itemsize


def new_level():
    _levels[0] += 1
    return _levels[0]


def close_key(key):
    """End a recording: nothing it tracked is recorded for it any more."""
    global _recording, _complex_grads, _wide
    key.alive = False
    if key in _active:
        _active.remove(key)
        _recording -= 1
        if not _active:
            _pinned_writes.clear()
        if key.complex:
            key.complex = False
            _complex_grads -= 1
            _wide -= 1


def note_complex(keys):
    """Mark the recordings ``keys`` as tracking a complex value: their recorded ops take the
    general branch of `apply` (complex inputs carry gradients there) until they end."""
    global _complex_grads, _wide
    for k in keys:
        if not k.complex and k in _active:
            k.complex = True
            _complex_grads += 1
            _wide += 1


def suspend_from(level):
    """Hide the live keys of ``level`` and above (during a backward of that level); returns
    them for `resume`."""
    hidden = [k for k in _active if k.level >= level and k.alive]
    for k in hidden:
        k.alive = False
    return hidden


def any_alive():
    """Whether a recording is alive (not hidden by `suspend_from`)."""
    for k in _active:
        if k.alive:
            return True
    return False


def resume(hidden):
    for k in hidden:
        k.alive = True


def _alive(keys):
    """The live ones among ``keys`` (the same tuple when all of one key is alive)."""
    if len(keys) == 1:
        return keys if keys[0].alive else ()
    return tuple(k for k in keys if k.alive)


def _union(a, b):
    extra = tuple(k for k in b if k not in a)
    return a + extra if extra else a


class Node:
    """One recorded op in the autodiff graph (or a leaf: an attached tensor, op None).

    ``keys``: the recordings that track this node (it is live while one of them is alive).
    ``saved``: (input arrays, output arrays, device) when more than one GradManager recorded
    at forward time, so that ``grad_graph`` can be given Tensors; None otherwise.
    ``device``: the device the forward ran on (its inputs'), current while backward runs.
    ``seq``: when the node was made (increasing): backward runs ops in decreasing ``seq``, the
    reverse of the forward order, as upstream's tape and torch's sequence numbers do.
    """

    __slots__ = ("op", "parents", "out_meta", "keys", "saved", "device", "seq", "__weakref__")

    def __init__(self, op=None, parents=(), out_meta=((), ), keys=(), device=None):
        self.seq = _next_seq()  # a parent is always made before its consumers: smaller seq
        self.op = op
        self.parents = parents  # per input: (Node, output index) or None
        self.out_meta = out_meta  # per output: (shape, dtype), to make zeros for unused outputs
        self.keys = keys
        self.saved = None
        self.device = device

    @property
    def live(self):
        return bool(_alive(self.keys))

    def free(self):
        """Drop the op (and the arrays it saved) and the links upwards: the graph is released."""
        if self.op is not None:
            self.op = None
            self.parents = ()
            self.keys = ()
            self.saved = None


_next_seq = _count().__next__
_seq_of = _attrgetter("seq")


def is_recording() -> bool:
    return _recording > 0


def _set_recording(delta):
    global _recording
    _recording += delta


Tensor = None  # megengine.core.tensor.Tensor, set when that module loads (it imports this one)


def _is_float(dtype):
    return dtype.kind == "f"


def _array(o, inputs=()):
    """An op's output as an array: numpy hands back a scalar (np.float32), not a 0-d array, from a
    ufunc on 0-d arrays or an index that picks one element; consumers that need an array (the
    torch bridge under the collectives, in-place writes) would otherwise receive a scalar. The
    scalar's dtype has lost the metadata a quantized input's dtype keeps its scale in (an array
    result keeps it): an output of that input's integer type takes its dtype back."""
    if not isinstance(o, np.generic):
        return o
    o = np.asarray(o)
    for a in inputs:
        if a.dtype.metadata is not None and a.dtype == o.dtype:
            return o.view(a.dtype)
    return o


def call_without_trace_hook(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the trace hook off, put back afterwards: what a hook's
    ``event`` does with a state change it lets through (the ops inside are not the traced
    function's own)."""
    global _trace_hook
    hook, _trace_hook = _trace_hook, None
    try:
        return fn(*args, **kwargs)
    finally:
        _trace_hook = hook


def apply(op, *inputs):
    """Run ``op`` on tensors; return a Tensor, or a tuple of Tensors for multi-output ops."""
    if _symbolic_hook is not None and (r := _symbolic_hook(op, inputs)) is not NotImplemented:
        return r
    if _autocast_hook is not None and op.autocast is not None:  # megengine.amp.autocast
        inputs = _autocast_hook(op, inputs)
    if _trace_hook is not None:  # megengine.jit.trace: it records/checks, then applies
        # (``.__call__`` spelled out: CPython specializes a method call and runs it in the same
        # interpreter loop, where calling the object goes through its type's call slot,
        # ~40 ns more per op of a checked call)
        return _trace_hook.__call__(op, inputs)
    return apply_unhooked(op, inputs)


def _mixed_devices(op, device, other):
    return ValueError(f"{op!r}: inputs are on different devices ({device} and {other}); "
                      "move them with .to(device) first")


def apply_unhooked(op, inputs):
    """`apply` past the trace hook, with the inputs as a tuple: what a `megengine.jit` checked
    call runs once it has checked ``op`` (with the hook in place: the checker passes what an
    op's forward applies itself straight here, see `megengine.jit.check`). Going round
    ``apply`` saves the checker the argument repacking and a hook test per op (~0.2 us of the
    ~1.3 us a check cost, measured with benchmarks/bench_jit_trace.py)."""
    if _profile_hook is not None:  # a Profiler or TensorSanityCheck: it applies the op itself
        return _profile_hook(op, inputs)
    if _format_hook is not None:  # tensors carry format labels: it applies and labels
        return _format_hook(op, inputs)
    n = len(inputs)
    if n == 1:  # (one or two inputs, most ops: no loop, no list comprehension to call)
        t = inputs[0]
        device, arrays = t._device, (t._data,)
    elif n == 2:
        a, b = inputs
        device = a._device
        if b._device != device:
            raise _mixed_devices(op, device, b._device)
        arrays = (a._data, b._data)
    else:
        device = inputs[0]._device if inputs else op.device  # an op without inputs names it
        arrays = []
        for t in inputs:  # (one pass: an eval batch norm layer's five inputs, every call)
            if t._device != device:
                raise _mixed_devices(op, device, t._device)
            arrays.append(t._data)
    run_on = device  # forward (and later backward) runs with this device current
    if op.out_device is not None:  # Copy: the output lives on the op's target device
        device = op.out_device
    keys = None
    if _recording:
        for t in inputs:
            e = t._node
            if e is not None:
                ks = e[0].keys
                if ks is not keys:
                    if len(ks) == 1:  # the common case, one key, inline
                        if not ks[0].alive:
                            continue
                    else:
                        ks = _alive(ks)
                        if not ks:
                            continue
                    keys = ks if keys is None else _union(keys, ks)
    if keys is None:
        needs = _NO_GRAD.get(n)
        if needs is None:
            needs = _NO_GRAD[n] = (False,) * n
        op.needs_input_grad = needs
        if _switcher is not None and run_on and run_on[0] == "g":
            out = _forward_on(run_on, op, arrays)
        else:
            out = op.forward(*arrays)
        if type(out) is np.ndarray:  # the common case: no scalar to turn into an array
            t = Tensor._wrap(out, device)
            if _pinned_roots and (out.base is not None or id(out) in _pinned_roots):
                _note_view(t)  # (an array of its own, base None, views nothing pinned)
            return t
        if isinstance(out, tuple):
            outs = tuple([Tensor._wrap(_array(o, arrays), device) for o in out])
            if _pinned_roots:
                for t in outs:
                    _note_view(t)
            return outs
        t = Tensor._wrap(_array(out, arrays), device)
        if _pinned_roots:
            _note_view(t)
        return t

    parents = tuple([
        e if (e := t._node) is not None and (e[0].keys is keys or _alive(e[0].keys)) else None
        for t in inputs
    ])
    if _wide:  # an integer tensor is attached, or a recording tracks a complex value
        return _apply_wide(op, arrays, parents, keys, run_on, device)
    op.needs_input_grad = tuple([
        p is not None and a.dtype.kind == "f" for p, a in zip(parents, arrays)
    ])
    if _switcher is not None and run_on and run_on[0] == "g":
        out = _forward_on(run_on, op, arrays)
    else:
        out = op.forward(*arrays)
    if not isinstance(out, tuple):  # one output, the common case, without the loops below
        if isinstance(out, np.generic):
            out = _array(out, arrays)
        node = Node(op, parents, ((out.shape, out.dtype),), keys, run_on)
        if _recording > 1:  # a gradient of this op may itself be differentiated: keep its values
            node.saved = (tuple(arrays), (out,), device)
        t = Tensor._wrap(out, device)
        if _pinned_roots and (out.base is not None or id(out) in _pinned_roots):
            _note_view(t)  # (as above)
        if out.dtype.kind == "f":
            t._node = (node, 0)
        elif out.dtype.kind == "c":  # a complex result of float inputs (F.complex, x * 1j)
            _complex_node(node, arrays)
            t._node = (node, 0)
        return t
    outs = tuple([_array(o, arrays) for o in out])
    node = Node(op, parents, tuple([(o.shape, o.dtype) for o in outs]), keys, run_on)
    if _recording > 1:
        node.saved = (tuple(arrays), outs, device)
    results = []
    complex_out = False
    for i, o in enumerate(outs):
        t = Tensor._wrap(o, device)
        if _pinned_roots:
            _note_view(t)
        if _is_float(o.dtype):
            t._node = (node, i)
        elif o.dtype.kind == "c":
            complex_out = True
            t._node = (node, i)
        results.append(t)
    if complex_out:
        _complex_node(node, arrays)
    return tuple(results)


def int_gradients(delta):
    """Count a recording that has an integer tensor attached (+1) or no longer has (-1)."""
    global _int_grads, _wide
    _int_grads += delta
    _wide += delta


class _ComplexGrad(Op):
    """The op of a recorded node through which a gradient passes by way of a complex value (a
    complex output, or a complex input that carries a gradient; see `Op`'s ``holomorphic``).

    Its backward runs the wrapped op's complex rule and hands each real input the real part of
    its gradient (for ``z = x + iy`` made of a real ``x``, dL/dx is the real part of dL/dz). An op
    without a complex rule raises here, when a gradient actually reaches it, instead of passing
    a wrong gradient on (or none: the silent kind of wrong training).
    """

    def __init__(self, op, in_dtypes):
        self.op = op
        self.real_inputs = tuple([d.kind != "c" for d in in_dtypes])
        self.needs_input_grad = op.needs_input_grad
        self.grad_order = op.grad_order
        self.none_for_unused_grads = getattr(op, "none_for_unused_grads", False)

    def backward(self, *grads):
        op = self.op
        rule = getattr(op, "backward_complex", None)
        if rule is not None:
            out = rule(*grads)
        elif op.holomorphic:  # torch's gradient of g * f'(z) is g * conj(f'(z))
            out = op.backward(*[None if g is None else g.conj() for g in grads])
            if isinstance(out, (tuple, list)):
                out = tuple([None if g is None else g.conj() for g in out])
            elif out is not None:
                out = out.conj()
        else:
            raise RuntimeError(
                f"{op!r}: complex gradients are not supported through this op: a gradient has "
                "to pass through it by way of a complex value, and it has no complex gradient "
                "rule. Take the complex value apart first (F.real, F.imag, F.abs) and compute "
                "with the float parts, or keep this op off the gradient path (x.detach())")
        if not isinstance(out, (tuple, list)):
            out = (out,)
        return tuple([g.real if real and g is not None and g.dtype.kind == "c" else g
                      for g, real in zip(out, self.real_inputs)])

    def grad_graph(self, inputs, outputs, grads):
        raise RuntimeError(
            f"{self.op!r}: a gradient through a complex value cannot be differentiated again "
            "(higher-order gradients through complex values are not supported)")

    def __repr__(self):
        return repr(self.op)


def _complex_node(node, arrays):
    """Make ``node``, an op with a complex value on its gradient path, run the op's complex
    rule (`_ComplexGrad`), and mark its recordings as tracking a complex value."""
    node.op = _ComplexGrad(node.op, [a.dtype for a in arrays])
    note_complex(node.keys)


class _InvalidGradOp(Op):
    """Stands between an op with a float result and an integer input that carries a gradient:
    upstream's gradient of a conversion from integers is invalid (megbrain's ``InvalidGrad``),
    so a gradient that reaches the integer input raises instead of being truncated."""

    def __init__(self, op, index, dtype):
        self.what, self.index, self.dtype = repr(op), index, dtype
        self.needs_input_grad = (True,)

    def backward(self, grad):
        raise RuntimeError(
            f"invalid grad: cannot take the gradient of {self.what} with respect to its input "
            f"{self.index}, a tensor of dtype {self.dtype} that carries a gradient (attached, or computed "
            "from an attached integer tensor): a gradient does not flow from a float result back "
            "to integers (upstream raises 'invalid grad' here too). Convert a detached copy "
            "(x.detach().astype(...)), or attach a float tensor")


def _apply_wide(op, arrays, parents, keys, run_on, device):
    """The recorded branch of `apply` while an integer tensor is attached (upstream's rules) or
    a recording tracks a complex value.

    Complex inputs carry gradients, through the op's complex rule (`_complex_node`). While an
    integer tensor is attached, integer inputs carry gradients too; an integer output carries
    one when an integer input does and the op has a backward (``x * 2``, indexing,
    ``IndexingSetOneHot``: their gradients have the integer dtype, as upstream's). An integer
    result of float inputs (``astype``, ``argmax``) carries none (upstream's TypeCvt from float
    to int has no gradient), nor does a bool. A float result of a tracked integer input gets an
    `_InvalidGradOp` on that input."""
    kinds = "fciu" if _int_grads else "fc"
    op.needs_input_grad = tuple([
        p is not None and a.dtype.kind in kinds for p, a in zip(parents, arrays)
    ])
    if _switcher is not None and run_on and run_on[0] == "g":
        out = _forward_on(run_on, op, arrays)
    else:
        out = op.forward(*arrays)
    multi = isinstance(out, tuple)
    outs = tuple([_array(o, arrays) for o in out]) if multi else (_array(out, arrays),)
    int_in = bool(_int_grads) and any(
        p is not None and a.dtype.kind in "iu" for p, a in zip(parents, arrays))
    track_int = int_in and type(op).backward is not Op.backward
    if int_in and any(o.dtype.kind in "fc" for o in outs):
        parents = list(parents)
        for i, (p, a) in enumerate(zip(parents, arrays)):
            if p is not None and a.dtype.kind in "iu":
                guard = Node(_InvalidGradOp(op, i, a.dtype), (p,), ((a.shape, a.dtype),), keys,
                             run_on)
                parents[i] = (guard, 0)
        parents = tuple(parents)
    node = Node(op, parents, tuple([(o.shape, o.dtype) for o in outs]), keys, run_on)
    if _recording > 1:
        node.saved = (tuple(arrays), outs, device)
    if any(o.dtype.kind == "c" for o in outs) or any(
            p is not None and a.dtype.kind == "c" for p, a in zip(parents, arrays)):
        _complex_node(node, arrays)
    results = []
    for i, o in enumerate(outs):
        t = Tensor._wrap(o, device)
        if _pinned_roots:
            _note_view(t)
        kind = o.dtype.kind
        if kind == "f" or kind == "c" or (track_int and kind in "iu"):
            t._node = (node, i)
        results.append(t)
    return tuple(results) if multi else results[0]


# Foreign buffers (another framework's memory seen through a view, e.g. torch's) that an op's
# backward allocated for one gradient and that nothing else references: id(key) -> a weak
# reference to the key (`_foreign_key`). A GradManager hands such a gradient to .grad as it is
# instead of copying it (memory it cannot see the owner of might alias). Entries are weak so
# that a declared gradient is freed as soon as backward has used it, as any other (strong ones
# kept every declared input gradient of a network alive until the end of backward: ShuffleNetV2's
# backward took 261 ms against 190 at one thread); they are cleared when the pass ends.
_fresh_owners = {}


def foreign_memory(a):
    """For a CuPy array: its memory object when CuPy does not own that memory (``UnownedMemory``:
    a torch tensor's storage seen through the bridge), else None. numpy marks such views by a
    ``base`` that is not an array; CuPy does not (their ``base`` is None, as for memory of
    their own), so the memory object is what tells them apart."""
    memory = getattr(a.data, "mem", None)  # numpy scalars (np.float32) have a memoryview there
    return memory if type(memory).__name__ == "UnownedMemory" else None


def _foreign_key(a):
    """What identifies ``a``'s foreign memory, or None for memory of numpy's or CuPy's own. A
    numpy array: the view the bridge made of the foreign buffer, the last array of ``a``'s
    ``base`` chain (numpy keeps the chain of a view of a view: a fresh gradient reshaped to its
    parameter's shape has its unreshaped array as ``base``), whose ``base`` is not an array.
    A CuPy array: its memory object."""
    if type(a) is not np.ndarray:
        return foreign_memory(a)
    while True:
        base = a.base
        if base is None:
            return None
        if type(base) is not np.ndarray:
            return a
        a = base


def _referent(key):
    """A weak reference to what keeps ``key`` alive: ``key`` itself (numpy arrays), or, for a
    CuPy memory object (which takes no weak reference), the torch tensor that owns the memory
    and lives exactly as long as it (the bridge's views: ``UnownedMemory._owner``, a tensor made
    for that view alone); a function returning ``key`` for other objects (held to the end)."""
    try:
        return weakref.ref(key)  # (a numpy array: the usual case)
    except TypeError:
        pass
    owner = getattr(key, "_owner", None)
    if owner is not None:
        try:
            return weakref.ref(owner)
        except TypeError:
            pass
    return lambda: key


def declare_fresh_gradient(a):
    """Declare that gradient ``a``, a view of foreign memory (numpy: its ``base`` is not an
    array; CuPy: see `foreign_memory`), owns that memory alone for the rest of this backward
    pass; returns ``a``."""
    if type(a) is np.ndarray and a.base is None:  # numpy's own memory: nothing foreign
        return a
    key = _foreign_key(a)
    if key is not None:
        _fresh_owners[id(key)] = _referent(key)
    return a


def fresh_registry():
    """The registry `declare_fresh_gradient` writes (``id(key)`` -> a weak reference to the
    key), for the bridge's C++ ``hand_over``, which declares its views of torch's gradients
    there itself (a view it made is its own key), instead of a Python call per gradient."""
    return _fresh_owners


def fresh_owner(a):
    """``a``'s foreign key (`_foreign_key`) when an op declared it fresh
    (`declare_fresh_gradient`), else None."""
    key = _foreign_key(a)
    if key is not None:
        ref = _fresh_owners.get(id(key))
        if ref is not None:
            target = ref()  # (dead: the declared buffer is gone, and another took its id)
            if target is key or target is not None and target is getattr(key, "_owner", None):
                return key
    return None


def forget_fresh_gradients():
    _fresh_owners.clear()


def _graph_order(roots):
    """Nodes reachable from ``roots`` in the order backward visits them: recorded ops in the
    reverse of their forward order (decreasing ``seq``), and each leaf (an attached tensor)
    right after the last op to hand it a gradient, the leaves of one op in the order that op
    hands gradients to its inputs (input order, or the op's ``grad_order``).

    This is the order in which the leaves' gradients become complete, and so the order in which
    GradManager callbacks see them: upstream's (its tape runs backward and a tensor's callback
    fires once its last gradient producer ran) and torch's (tensor hooks and
    post-accumulate-grad hooks: ``a * b`` gives a then b; ``(x * a) * b`` gives b, x, a).
    Distributed all-reduce bucketing and the reverse-order relay of collectives rely on it.
    """
    ops, seen, leaf_roots = [], set(), []  # seen holds the nodes (hashed by identity)
    for root in roots:
        if root.parents:
            if root not in seen:
                seen.add(root)
                ops.append(root)
        elif root not in leaf_roots:
            leaf_roots.append(root)
    see, push = seen.add, ops.append
    for node in ops:  # the ops reachable (the list grows while it is walked)
        for p in node.parents:
            if p is not None:
                parent = p[0]
                if parent.parents and parent not in seen:
                    see(parent)
                    push(parent)
    ops.sort(key=_seq_of)  # forward order; the walk above found them roughly in reverse
    # Built in forward order and reversed at the end: before each op, the leaves it is the
    # first consumer of, in the reverse of the order it hands them gradients.
    order = []
    put = order.append
    for node in ops:
        parents = node.parents
        if len(parents) == 1:
            parent = parents[0][0]
            if not parent.parents and parent not in seen:
                see(parent)
                put(parent)
        else:
            grad_order = node.op.grad_order
            if grad_order is not None:
                parents = [parents[i] for i in grad_order]
            for p in reversed(parents):
                if p is not None:
                    parent = p[0]
                    if not parent.parents and parent not in seen:
                        see(parent)
                        put(parent)
        put(node)
    for leaf in leaf_roots:  # a root that is a leaf and no op reached: its gradient is given
        if leaf not in seen:
            put(leaf)
    order.reverse()
    return order


def run_backward(ys, dys, wanted, free_graph=True, key=None, graph=False, visited=None,
                 stop=(), free_early=None):
    """Backpropagate ``dys`` from tensors ``ys``; return {wanted (node, idx): gradient}.

    ``wanted`` is a set of (id(node), index) pairs whose total gradient the caller needs (the
    tensors it attached). ``key``: the recording being differentiated; nodes it did not record
    are not entered (None: every node), nor are the nodes in ``stop`` (ids of intermediates
    that were attached to it while recording: leaves for it). With ``free_graph`` every visited node is released
    afterwards; ``visited``, a list, receives the visited nodes instead (the caller frees them).
    ``free_early`` (default: ``free_graph``) frees each node as soon as its backward has run when
    no recording but ``key`` tracks it, so peak memory stays what torch's would be.

    ``graph`` False: gradients are raw arrays (``dys`` too). True: ``dys`` and the gradients
    are Tensors, and nodes that a live recording tracks (or that receive a tracked gradient)
    run ``op.grad_graph`` so that the computation of the gradient is recorded.
    """
    order = _graph_order([y._node[0] for y in ys if y._node is not None])
    if _pinned_writes:
        _refuse_stale_pinned(order, key)
    if visited is not None:
        visited.extend(order)
    if free_early is None:
        free_early = free_graph
    scope = None if _switcher is None else DeviceScope(_switcher)
    try:
        if graph:
            return _backward(ys, dys, wanted, key, stop, order, _graph_step, _add_tensors,
                             free_early, scope)
        return _backward(ys, dys, wanted, key, stop, order, None, _add_arrays, free_early,
                         scope)
    finally:
        if scope is not None:
            scope.close()  # the caller's device is current again, whatever happened
        if free_graph:
            for node in order:
                node.free()


# The float dtypes the engine's ATen paths and fused CUDA kernels take (each op's measurements
# are beside its use). float16 keeps each op's array code, which follows upstream's precision
# for it (float32 accumulation where upstream's kernels have it), except where ATen gives the
# same values (ReLU, gelu, casts, sums, differences and products: each says so) or torch's
# (softmax, log_softmax: float32 inside, rounded once); other dtypes have no such path.
KERNEL_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
FLOAT16 = np.dtype(np.float16)  # (compared by identity: native dtypes are singletons, 20 ns)

# From this many elements, element-wise work on numpy arrays may run on torch's thread pool
# (functional/_aten.py "pool", where the measurements are): the callers' cheap first test.
POOL_MIN = 262144


def _add_arrays(a, b):
    # a large gradient sum on torch's pool, when it has several threads; float16 on ATen's
    # vectorised loop (`functional._aten.binary`)
    if a.size >= POOL_MIN or a.dtype is FLOAT16:
        from ..functional import _aten  # (functional sits above core: imported on use)

        out = _aten.binary("add", a, b)
        if out is not None:
            return out
    out = a + b
    return _array(out) if isinstance(out, np.generic) else out  # (0-d: see _backward)


def _add_tensors(a, b):
    return a + b  # a Tensor operator: recorded when either gradient is tracked


def _backward(ys, dys, wanted, key, stop, order, step, add, free_early, scope):
    grads = {}  # id(node) -> list of accumulated output gradients
    for y, dy in zip(ys, dys):
        if y._node is None:
            continue
        node, idx = y._node
        if scope is not None:  # two outputs of one node are summed on their device
            scope.enter(y._device)
        slot = grads.setdefault(id(node), [None] * len(node.out_meta))
        slot[idx] = dy if slot[idx] is None else add(slot[idx], dy)
    found = {}
    joined_at = key.joined_at if key is not None else None
    for node in order:
        slot = grads.pop(id(node), None)
        if slot is None:
            continue
        if len(slot) == 1:  # one output (every leaf): no enumerate, one key
            if slot[0] is not None:
                k = (id(node), 0)
                if k in wanted:
                    found[k] = slot[0]
        else:
            for i, g in enumerate(slot):
                if g is not None and (id(node), i) in wanted:
                    found[(id(node), i)] = g
        op = node.op
        if op is None:
            continue  # a leaf, or a graph that was already released
        if key is not None and key not in node.keys:
            continue  # recorded by other GradManagers only: nothing of this one lies above
        if stop and id(node) in stop:
            continue  # an intermediate attached while recording: a leaf for this backward
        if not any(op.needs_input_grad):
            continue
        if scope is not None:  # several GPUs: this node's backward allocates on its device
            scope.enter(node.device)
        if step is not None:
            in_grads = step(node, op, slot)
        elif len(slot) == 1:  # the raw fast path, inline: one output, so its gradient exists
            in_grads = op.backward(slot[0])
        else:
            in_grads = _array_step(node, op, slot)
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
            if type(g) is not np.ndarray and isinstance(g, np.generic):
                # a numpy scalar (a ufunc of 0-d arrays gives one) becomes an array, as
                # forward's outputs; as a scalar it read as a CuPy array in the tests of the
                # CUDA paths (`type(g) is not np.ndarray`), e.g. exp(tanh(p)) of a 0-d p
                g = _array(g)
            pnode, pidx = parent
            if joined_at and id(pnode) in joined_at and node.seq < joined_at[id(pnode)][1]:
                continue  # used before this recording took pnode up: a constant for it
            pslot = grads.get(id(pnode))
            if pslot is None:
                pslot = grads[id(pnode)] = [None] * len(pnode.out_meta)
            shape, dtype = pnode.out_meta[pidx]
            if g.shape != shape:
                raise RuntimeError(
                    f"{op!r}.backward gave a gradient of shape {g.shape} for an input "
                    f"of shape {shape}"
                )
            if g.dtype != dtype:  # an input's gradient has its dtype (a float16 input of an op
                g = g.astype(dtype)  # that computes in float32 under autocast gets float16)
            pslot[pidx] = g if pslot[pidx] is None else add(pslot[pidx], g)
        if free_early and (key is None or node.keys == (key,)):
            node.free()  # its saved arrays go now, not after the whole backward (as torch frees)
    return found


def _array_step(node, op, slot):
    if getattr(op, "none_for_unused_grads", False):
        return op.backward(*slot)
    full = [
        g if g is not None else _zeros_like_meta(g_meta, slot)
        for g, g_meta in zip(slot, node.out_meta)
    ]
    return op.backward(*full)


def _tracked(t):
    e = t._node
    return e is not None and bool(_alive(e[0].keys))


def _graph_step(node, op, slot):
    """One node of a backward that an outer GradManager records (gradients are Tensors)."""
    device = next(g for g in slot if g is not None)._device
    if not _alive(node.keys) and not any(g is not None and _tracked(g) for g in slot):
        # nobody records through this node: the raw backward gives the same values, faster
        arrays = [None if g is None else g._data for g in slot]
        out = _array_step(node, op, arrays)
        if not isinstance(out, (tuple, list)):
            out = (out,)
        return tuple(None if g is None else Tensor._wrap(g, device) for g in out)
    grad_graph = getattr(op, "grad_graph", None)
    if grad_graph is None:
        # an op whose raw backward gives no gradient at all (comparisons, indices, ...) has
        # nothing to record; any other op without grad_graph would give a wrong derivative
        out = _array_step(node, op, [None if g is None else g._data for g in slot])
        if all(g is None for g in (out if isinstance(out, (tuple, list)) else (out,))):
            return (None,) * len(node.parents)
        raise RuntimeError(
            f"{op!r} has no grad_graph: its gradient cannot be differentiated (a "
            "higher-order gradient through it would be silently wrong); avoid this op inside "
            "a higher-order computation, or give its class a grad_graph method"
        )
    if node.saved is None:
        raise RuntimeError(
            f"{op!r}: its gradient is to be differentiated, but the op ran while only one "
            "GradManager recorded, so its inputs were not kept; start recording the outer "
            "GradManager before the forward computation"
        )
    in_arrays, out_arrays, device = node.saved
    inputs = []
    for a, p in zip(in_arrays, node.parents):
        t = Tensor._wrap(a, device)
        t._node = p
        inputs.append(t)
    outputs = []
    for i, a in enumerate(out_arrays):
        t = Tensor._wrap(a, device)
        if _is_float(a.dtype):
            t._node = (node, i)
        outputs.append(t)
    if not getattr(op, "none_for_unused_grads", False):
        slot = [
            g if g is not None else Tensor._wrap(_zeros_like_meta(meta, out_arrays), device)
            for g, meta in zip(slot, node.out_meta)
        ]
    if _autocast_hook is not None and not getattr(op, "grad_autocast", False):
        from . import amp  # (loaded: it installed the hook)

        return amp.run_uncovered(grad_graph, tuple(inputs), tuple(outputs), tuple(slot))
    return grad_graph(tuple(inputs), tuple(outputs), tuple(slot))


def _zeros_like_meta(meta, slot):
    """Zeros for an output nobody used, on the device of the output gradients that exist."""
    shape, dtype = meta
    present = next(g for g in slot if g is not None)  # backward only visits nodes with one
    return xp_of(present).zeros(shape, dtype)


def _half_ops():
    """`megengine.core.ops`, which holds the float16 conversions (`ops.cast`), loaded when a
    float16 call first needs it (it imports this module)."""
    global _ops
    if _ops is None:
        from . import ops as _ops
    return _ops


_ops = None


def _arity(method):
    """How many arrays ``method(self, ...)`` takes, where that is fixed (no defaults, no
    ``*args``); else None."""
    code = getattr(method, "__code__", None)
    if code is None or code.co_flags & 0x0C or method.__defaults__:  # (*args, **kwargs)
        return None
    return code.co_argcount - 1


# The wrappers below come in one- and two-array forms besides the general one: a float32
# call through them costs a frame and a dtype test (~45 ns, against ~2 us for a small
# elemwise op's whole call), where repacking ``*arrays`` costs ~100 ns more

def _half_forward(forward):
    """``forward`` of an op class that sets `Op.half_in_float32`: a call that `computes_half`
    runs ``forward`` on its float16 inputs converted to float32 (other inputs as they are)
    and rounds its float32 outputs to float16 once; other calls go straight through."""
    arity = _arity(forward)
    if arity == 1:
        def half_forward(self, x):
            if x.dtype is FLOAT16 and self.computes_half((x,)):
                return _forward_in_float32(self, forward, (x,))
            return forward(self, x)
    elif arity == 2:
        def half_forward(self, a, b):
            if (a.dtype is FLOAT16 or b.dtype is FLOAT16) and self.computes_half((a, b)):
                return _forward_in_float32(self, forward, (a, b))
            return forward(self, a, b)
    else:
        def half_forward(self, *arrays):
            for a in arrays:
                if a.dtype is FLOAT16:
                    if self.computes_half(arrays):
                        return _forward_in_float32(self, forward, arrays)
                    break
            return forward(self, *arrays)

    half_forward.half_inner = forward
    half_forward.__doc__, half_forward.__name__ = forward.__doc__, forward.__name__
    return half_forward


def _forward_in_float32(op, forward, arrays):
    cast = _half_ops().cast
    op.half_dtypes = tuple([a.dtype for a in arrays])
    op.half_inputs = arrays
    try:
        out = forward(op, *[cast(a, np.float32) if a.dtype is FLOAT16 else a for a in arrays])
    finally:
        op.half_inputs = None  # (not kept alive by the op)
    if isinstance(out, tuple):
        return tuple([cast(o, FLOAT16) if o.dtype == np.float32 else o for o in out])
    return cast(out, FLOAT16) if out.dtype == np.float32 else out  # (integer outputs stay)


def _half_backward(backward):
    """``backward`` of an op class that sets `Op.half_in_float32`: after a forward that
    computed in float32, the float16 output gradients are converted to float32, and each
    input's gradient is rounded once to that input's own dtype (a float32 input mixed with
    float16 ones, such as a normalization's parameters, keeps float32)."""
    if _arity(backward) == 1:
        def half_backward(self, g):
            if self.half_dtypes is None:
                return backward(self, g)
            return _backward_in_float32(self, backward, (g,))
    else:
        def half_backward(self, *grads):
            if self.half_dtypes is None:
                return backward(self, *grads)
            return _backward_in_float32(self, backward, grads)

    half_backward.half_inner = backward
    half_backward.__doc__, half_backward.__name__ = backward.__doc__, backward.__name__
    return half_backward


def _backward_in_float32(op, backward, grads):
    cast, dtypes = _half_ops().cast, op.half_dtypes
    out = backward(op, *[cast(g, np.float32) if g is not None and g.dtype is FLOAT16 else g
                         for g in grads])
    if not isinstance(out, (tuple, list)):
        return out if out is None or out.dtype == dtypes[0] else cast(out, dtypes[0])
    return tuple([g if g is None or g.dtype == d else cast(g, d) for g, d in zip(out, dtypes)])


def xp_of(a):
    """The array module of ``a`` (numpy, or CuPy for a GPU array)."""
    if type(a) is np.ndarray:  # the common case, without the string test
        return np
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np
