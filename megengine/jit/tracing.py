"""`trace`: record a function's ops on the first call of each signature; later calls rerun the
function and check it against the record (``symbolic=False`` and ``symbolic=True``, as upstream
1.x always calls the function) or replay the record without running the Python function
(``without_host=True``).

How it works. While a traced function runs for the first time, ``dispatch._trace_hook`` is a
`record._Recorder`: every ``apply(op, *tensors)`` goes through it. It notes, per op, a pristine
copy of the op (taken before ``forward`` stores anything on it), where each input came from and the
slots of the outputs. A value's source ("slot") is one of

- an argument: a Tensor found in the arguments (through tuples, lists and dicts);
- an output of an earlier op (or a detached alias of one: ``t.detach()``);
- an external tensor: one the function did not make (a Parameter, a buffer, a global). It is
  kept by reference and read live on replay, so in-place updates (optimizers, ``load_state_dict``)
  are seen. With ``capture_as_const=True`` its value at trace time is captured: checked calls
  compare the tensor with it (upstream's "tensors not equals") and run the op on the tensor, so
  gradients reach it; replays compute with the captured value;
- the ``.grad`` of a tensor (read live: gradients are new tensors on every backward);
- a constant: a tensor made inside the function from Python data (``x * 2``,
  ``mge.tensor(np_array)``), told apart from externals because nothing outside the function
  holds it once the call returns. Its value is captured; one the Tensor constructor made
  (``mge.tensor(a)``) outside ``capture_as_const`` is *fed*: checked calls compute with the
  value it has in that call, as upstream's trace takes host data afresh (replays and dumps use
  the captured one), and so are host arrays written into tensors (``w.set_value(a)``);
- an output of an event (below).

Besides ops, the record holds *events*: calls that change state without being ops. The engine
announces them through ``dispatch._trace_hook.event(fn, *args)`` (see "Hooks" below):
``GradManager.attach/record/release/backward``, ``Optimizer.step/clear_grad/zero_grad`` and the
in-place tensor writes ``Tensor._inplace`` (``p -= lr * g``, ``x[i] = v``) and ``Tensor._reset``
(``set_value``) into tensors from outside the call (arguments, externals, Parameters, constants:
the caller's tensor object changes). An event runs with the hook off (the ops inside a backward or
an optimizer step are not recorded; they run again when the event is replayed) and is replayed by
calling the same function on the same objects, with traced tensors substituted.

An in-place write (``Tensor._inplace``: ``x += y``, ``x[i] = v``) into a tensor the call made
itself (an op's output, a detach(), an event's output), of a value the call made, is dataflow,
not an event: nothing outside the call sees that tensor, so from then on it simply holds the
result's slot (ResNet's ``out += identity``). Checked calls decide the same way, replays have no
step for it, and `dump` writes such programs.

Signatures. A trace keeps one program per call signature: the structure of the arguments
(tuples, lists, dicts, keyword names), each tensor's shape, dtype and device, and the value of
each non-tensor argument (an object by value where its class defines equality and a hash, else
by identity, held weakly: its programs go when it does; see `_program._kept`). A call with a
signature not seen before is recorded anew (as upstream re-traces); the earlier programs stay
and serve their signatures, up to ``max_programs`` of them (least recently used dropped first: a
program holds the parameters and constants it read, so an unbounded cache grows with every new
shape). ``@trace`` on a method keys its programs by instance too, and holds the instances
weakly: a deleted model is freed, and its programs (with the parameters they hold) are dropped
when it goes.

Checking (``symbolic=False`` or ``symbolic=True``, later calls of a known signature, see
`check`): the function runs normally, so its Python side effects (prints, counters, list
appends, exceptions) happen on every call, and each op and event is compared with the record
(op type and parameters, input sources, input shapes and dtypes); the first difference raises
`TraceMismatchError` with upstream's ``"trace error because <reason>"``. An exception of the
user's function propagates unchanged. Either way the hook is removed and the next call is
checked against the same record. (Ops run eagerly as they are checked, and each value is let
go of after its last recorded use, as eager code lets go of its temporaries; a
``capture_as_const`` capture must still hold its captured bits, compared only after the engine
wrote into some tensor: see `captures`.) Plain ops and events are matched by
comparisons prepared when the program was compiled (see `check`: ~0.8-1.2 us per tiny op,
~1.4-2.3 us for an op on a constant made from Python data such as ``x + 1.0``, ~0.8 us per
event on the 2-core CI machine, so code made of small ops runs at ~1.4-1.6x eager; ResNet-18
and ShuffleNetV2 checked calls within ~1-6% of eager; ``benchmarks/bench_jit_trace.py``,
``--micro`` for the small-op patterns), the rest in full.

Replay (``without_host=True``, later calls of a known signature, see `replay`): each step runs on
fresh op copies through ``apply`` (so a recording GradManager still builds the autodiff graph),
events are called again, and the outputs are rebuilt. The Python function does not run: its
Python side effects (prints, attribute assignments such as ``x.grad = None``) happen when a
signature is recorded only. The ``.grad`` of a tensor argument is read from each call's own
argument (``GradManager.attach`` is an event, so a GradManager made inside the function
attaches the new argument on replay).

Host reads. A value read to the host while recording (``Tensor.numpy``, ``item``, ``int()``,
``tolist``, a Tensor given as a shape, ``F.topk``'s ``k``...) is noted by the hook's ``read``
(`megengine.core.tensor.Tensor.numpy` calls it): the Python code may have baked it into the
ops. A read of an argument makes its value part of the signature: a later call whose argument
holds another value records anew (``F.broadcast_to(x, shape_tensor)`` with a new shape). A read
of any other value (an op's output, a parameter, a ``.grad``) is checked on replay
(``without_host=True``) after the step that made it: another value raises `TraceMismatchError`
instead of replaying ops built from the old one. Checked calls run the Python code, so a read
value that changes the ops is caught by the op check. Reads inside `exclude_from_trace` (and the
engine's own argument validation, ``Tensor._peek``) are not noted.

Files: `_program` (the data), `record` (record), `check` (check a later call), `replay`,
`dump` (write a program to a file; `megengine.utils.comp_graph_tools` loads and runs it),
`xla_backend` (upstream's ``xla_trace``, a ``without_host`` trace here), this file (the
public API).

Hooks. The engine's side of the contract is one global read per call, ``dispatch._trace_hook``,
checked in ``apply`` and at the start of each event method::

    if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
        return dispatch._trace_hook.event(GradManager.backward, self, y, dy)

Nothing is patched. Tracing is not thread-safe: one traced call runs at a time.
"""
import collections
import contextlib
import functools
import inspect
import os
import weakref

import numpy as np

from ..core import _trace_option, dispatch
from ..core.tensor import Tensor
from ..logger import get_logger
from . import arith_opt
from ._program import (TraceError, TraceMismatchError, _flatten, _holds_gone, _host, _kept,
                       _Program)
from .check import _Checker, _ExcludedBlock, _ProfilingChecker
from .record import _Hook, _Recorder
from .replay import Profile, replay

logger = get_logger(__name__)

#: how many programs a `trace` keeps unless told otherwise (``trace(..., max_programs=N)``)
DEFAULT_MAX_PROGRAMS = 64

__all__ = ["trace", "TraceError", "TraceMismatchError", "exclude_from_trace", "is_tracing",
           "set_symbolic_shape"]


def set_symbolic_shape(option: bool) -> bool:
    """Set the default of ``trace(symbolic_shape=...)``; return the previous value (upstream's
    ``megengine.core._trace_option.set_symbolic_shape``)."""
    return _trace_option.set_symbolic_shape(option)


class trace:
    """Wrap a function so its ops are recorded on its first call and reused on later calls.

    Usage: ``@trace``, ``@trace(symbolic=True)``, ``trace(fn, symbolic=True)``; the traced
    function takes positional and keyword arguments (tensors anywhere in tuples, lists, dicts).

    One program is kept per call signature (argument structure, each tensor's shape, dtype and
    device, each non-tensor argument's value; an object without value equality by identity,
    held weakly, so its programs go when the caller lets go of it): a call with a new signature
    (a new batch size, another keyword argument) runs the function and records it again, as
    upstream re-traces.
    A positional numpy array is made a Tensor first, as MegEngine 0.x did (0.x programs pass
    their batches so; upstream 1.x refuses them).

    ``symbolic=False`` (upstream's default) and ``symbolic=True``: later calls of a known
    signature run the function again, as upstream's ``trace.__call__`` does, and check that it
    applies the same ops as the recorded call, to values from the same places; the first
    difference raises `TraceMismatchError` (``str(e)`` is upstream's ``"trace error because
    <reason>"``, ``e.detail`` names the op and the values) and the trace stays usable. Python
    side effects (prints, counters, exceptions) happen on every call. Upstream's two modes differ
    in how its graph compiler builds the first call; this engine runs ops one by one either way,
    so both cost eager speed plus the check: a few percent for ops on arrays of some size
    (~3% on an MLP 784-256-10 training step at batch 64), more where each op is tiny
    (~10% on a training step of an MLP 32-32-32-10 at batch 8; see ``benchmarks/README.md``).

    ``without_host=True`` (upstream: run the Python code on the first call only): later calls of
    a known signature do not run the Python function; they replay the recorded ops and events
    (GradManager record/backward/release, optimizer steps, in-place writes) on the new
    arguments. Parameters and other tensors from outside the function are read live, so
    optimizer updates are seen. A GradManager callback's ops are replayed, not its Python code
    (its side effects happen on the first call only, as upstream; see `grad_callbacks`). Python code in the function (prints, branches on values,
    tensors made from Python or numpy data, ``megengine.random`` draws, which are such data)
    runs at recording only: what it made is a constant of the program. Values it read on the
    host are checked on replay (see the module docstring, "Host reads"). Ops that draw random
    numbers in their forward (dropout) draw fresh ones on every replay.

    ``capture_as_const=True``: tensors from outside the function are captured by value at trace
    time. `dump` needs it. As upstream, a checked call (``symbolic=False`` or ``True``) raises
    `TraceMismatchError` ("tensors not equals") when such a tensor no longer holds its captured
    value (an optimizer step changed it), instead of computing with the old value; a replay
    (``without_host=True``) computes with the captured value, and its first call raises
    `TraceError` when the call itself changed one. Trace a function that trains without it,
    and a separate inference function to dump.

    ``record_only=True``: for `dump` only (implies ``capture_as_const``); the first call records
    (this engine records by running the function once) and later calls raise.

    ``imperative=True``: every call runs the function eagerly; the first call of each signature
    is still recorded, so `dump` works (upstream's debugging mode runs imperatively too).

    ``profiling=True``: replays and checked calls time each op; `get_profile` returns the sums.

    Values read to the host (``.numpy()``, ``.item()``, a shape Tensor) while a signature is
    recorded: an argument's value joins the signature (another value records anew); another
    value is checked when a ``without_host`` replay reaches it (see the module docstring).

    ``max_programs`` (an extension; default `DEFAULT_MAX_PROGRAMS`, 64): how many programs the
    trace keeps, over all signatures (and all instances, for a method). When a new signature
    would exceed it, the least recently used program is dropped (with a warning the first
    time); its signature is recorded again if it comes back. Settable later
    (``traced.max_programs = 8``). Upstream keeps one compiled graph per trace.

    ``@trace`` on a method: the instance is not part of the recorded program's arguments (a
    dumped program's inputs are the method's own arguments), each instance gets its own programs,
    and the trace holds instances weakly, so deleting a model frees it, and its programs go with
    it. (An instance that cannot be weakly referenced is held, as any argument, until its
    programs leave the cache; so is one that a recorded op or event itself refers to, e.g. a
    GradManager callback that is a bound method of the model.)

    ``opt_level`` (0-3, default 2 as upstream; 0.x's ``None`` is 2): 1 and up apply upstream's
    level-1 arithmetic rewrites (``a / a`` -> 1, ``log(exp(x) + exp(y))`` -> ``logaddexp``,
    ``log(1 + x)`` -> ``log1p``, ...; the table and where they apply are in `arith_opt`) to
    checked calls, replays and `dump`; the recording call applies them under ``symbolic=True``
    and ``without_host=True`` (upstream's symbolic first call runs its optimized graph) and not
    under ``symbolic=False`` (upstream's first call is eager). 0 computes every op as written.
    Levels 2 and 3 add upstream's global passes and JIT fusion, which this engine has not.

    ``symbolic_shape`` (default True, as upstream): while the function runs, ``x.shape`` is a
    ``megengine.core._trace_option.Shape``: a tuple, plus what upstream's shape Tensor answers
    there (``x.shape.numpy()``, ``.tolist()``, ``.dtype``); ``x.shape == (2, 3)`` is a bool, as
    ordinary programs expect. Each shape signature has its own program, so the items are ints,
    except while a ``capture_as_const`` trace records: then they are ``SymDim`` sizes that
    remember where they came from, so that a dumped program runs at other input shapes (op
    parameters built from them are computed at the run's shapes; other uses of a size are
    guards checked at run time; see `megengine.jit.shape_guards`).

    Shapes that data decides: the outputs of ``cond_take``, a boolean mask index (``x[x > 0]``),
    ``F.where(mask)``, ``nms``, and values computed from them, may have another shape on every
    call of one signature, as in upstream's compiled graphs (checked calls compare such a
    value's op, parameters and inputs, not its shape). With ``symbolic_shape`` on, their sizes
    are ``SymDim``s in every trace, so ``v.sum() / v.shape[0]`` or ``F.zeros((v.shape[0], 4))``
    follow the data in checked calls, replays and dumps; a size used as a Python value
    (``int(n)``, ``if n > 0``) is a constant of the program: a checked call that makes another
    one raises ``TraceMismatchError``, a replay or loaded program whose size differs raises
    ``ShapeGuardError``. With ``symbolic_shape=False`` sizes are plain ints, and a
    ``without_host`` replay refuses (``TraceMismatchError``) a value whose size the function
    read and whose shape now differs.

    Accepted for upstream's graph compiler, without effect here because there is no graph
    compiler (the program runs op by op on numpy/CuPy): ``sublinear_memory_config``,
    ``dtr_config``, ``graph_opt_config`` (upstream's JIT fusion switches);
    MegEngine 0.x's ``log_level`` and ``allreduce_pack_max_size`` too.

    Differences from upstream, by design of this fork: the first call of a signature runs
    eagerly, so values can be read in it (upstream's symbolic first call cannot read them); a
    call whose arguments were read on the host with other values records anew; and
    `exclude_from_trace` regions do not run on a ``without_host`` replay.
    """

    #: MegEngine 0.x's switch: ``trace.enabled = False`` (or ``MGE_DISABLE_TRACE`` set in the
    #: environment) makes every traced function run as plain Python, to debug it
    enabled = not os.getenv("MGE_DISABLE_TRACE")

    def __new__(cls, *args, **kwargs):
        if not args and "function" not in kwargs:
            return functools.partial(cls, **kwargs)  # @trace(symbolic=True)
        return super().__new__(cls)

    def __init__(self, function, symbolic=False, capture_as_const=False, record_only=False,
                 sublinear_memory_config=None, dtr_config=None, profiling=False, opt_level=2,
                 graph_opt_config=None, symbolic_shape=None, without_host=False,
                 imperative=False, *, max_programs=None, log_level=None,
                 allreduce_pack_max_size=None):
        if not callable(function):
            raise TypeError(f"trace: expected a function to trace, got {type(function).__name__}")
        # MegEngine 0.x's graph-compiler options: opt_level=None (its default), log_level and
        # allreduce_pack_max_size have nothing to tune here (no graph compiler; the all-reduce
        # callback buckets gradients itself), so they are accepted and have no effect
        if opt_level is None:
            opt_level = 2
        if not isinstance(opt_level, int) or isinstance(opt_level, bool) or \
                not 0 <= opt_level <= 3:
            raise ValueError(f"trace: opt_level must be an int from 0 to 3, got {opt_level!r}")
        from . import DTRConfig, GraphOptimizationConfig, SublinearMemoryConfig

        for name, value, kind in (("sublinear_memory_config", sublinear_memory_config,
                                   SublinearMemoryConfig), ("dtr_config", dtr_config, DTRConfig),
                                  ("graph_opt_config", graph_opt_config,
                                   GraphOptimizationConfig)):
            if value is not None and not isinstance(value, kind):  # (upstream: AttributeError)
                raise TypeError(f"trace: {name} must be a {kind.__name__} or None, got "
                                f"{type(value).__name__} {value!r}")
        self.__wrapped__ = function
        if inspect.isfunction(function) or inspect.ismethod(function):
            functools.update_wrapper(self, function, updated=())
        self._symbolic = bool(symbolic)
        self._without_host = bool(without_host)
        self._replays = self._without_host  # symbolic=True reruns Python and checks, as upstream
        self._record_only = bool(record_only)
        self._capture_as_const = bool(capture_as_const) or self._record_only
        self._imperative = bool(imperative)
        self._opt_level = opt_level
        # upstream's default (True): while the function runs, x.shape is a `Shape` (a tuple
        # that also has upstream's shape-Tensor reads, see core/_trace_option.py)
        self._symbolic_shape = True if symbolic_shape is None else bool(symbolic_shape)
        self._profile = Profile() if profiling else None
        # (owner, signature) -> program, least recently used first. owner: None for a function,
        # id(instance) for a traced method; signature: ((shape, dtype, device), ...) for calls
        # with tensors only, else the argument tree (a tuple that starts with a type: no clash)
        self._programs = collections.OrderedDict()
        # (owner, signature) -> indices of the tensor arguments whose values the programs of
        # that signature read to the host: their values are part of the cache key
        self._read_args = {}
        self._instances = {}  # id(instance) -> weakref to it, for a traced method's instances
        self._dead = []  # ids of instances gone whose programs are still to drop (_ARGUMENT:
        # of an argument object gone)
        self._argument_death = None  # (made once: `_on_argument_death`)
        self._busy = False  # the cache is being changed: a dying instance's drop waits
        self.max_programs = DEFAULT_MAX_PROGRAMS if max_programs is None else max_programs
        self._warned_full = False
        self._last = None  # the program of the latest call: what dump writes
        self._last_owner = None

    @property
    def max_programs(self):
        """How many programs this trace keeps (least recently used dropped first)."""
        return self._max_programs

    @max_programs.setter
    def max_programs(self, n):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"trace: max_programs must be a positive int (how many call "
                             f"signatures keep their program), got {n!r}")
        self._max_programs = n
        self._busy = True
        try:
            while len(self._programs) > n:
                self._drop_oldest()
        finally:
            self._done()

    def __get__(self, obj, objtype=None):
        # @trace on a method: bind the instance, which keys its own programs (held weakly)
        return self if obj is None else functools.partial(self._call_method, obj)

    def __repr__(self):
        name = getattr(self.__wrapped__, "__qualname__", repr(self.__wrapped__))
        return (f"<trace of {name} (symbolic={self._symbolic}, {len(self._programs)} traced "
                f"signatures)>")

    @property
    def _program(self):
        return self._last

    def __call__(self, *args, **kwargs):
        return self._run(None, (), args, kwargs)

    def _call_method(self, obj, *args, **kwargs):
        if self._dead:
            self._done()  # an id of an instance gone may be the id of ``obj`` now
        owner = id(obj)
        ref = self._instances.get(owner)
        if ref is None or ref() is not obj:
            try:
                ref = weakref.ref(obj, _forget_instance(self, owner))
            except TypeError:  # no weak references (__slots__ without __weakref__): an argument
                return self._run(None, (), (obj,) + args, kwargs)
            self._busy = True
            try:
                self._instances[owner] = ref
            finally:
                self._done()
        return self._run(owner, (obj,), args, kwargs)

    def _run(self, owner, bound, args, kwargs):
        """A call: ``bound`` (the instance, or nothing) and ``args`` go to the function; the
        signature covers ``args`` and ``kwargs``."""
        if not trace.enabled:
            return self.__wrapped__(*bound, *args, **kwargs)
        if any(type(a) is np.ndarray for a in args):
            # MegEngine 0.x made each positional argument a Tensor, so 0.x programs pass numpy
            # batches; as values they would key a new program per batch (1.x raises for them)
            args = tuple(Tensor(a) if type(a) is np.ndarray else a for a in args)
        key = None
        if not kwargs:  # the common call: tensors only, keyed without building a tree
            sig = []
            for a in args:
                if not isinstance(a, Tensor):
                    break
                d = a._data
                sig.append((d.shape, d.dtype, a._device))
            else:
                key = (owner, tuple(sig))
                leaves = args
        if key is None:
            leaves = []
            key = (owner, _flatten((args, kwargs), leaves))
        programs = self._programs
        read = self._read_args.get(key) if self._read_args else None
        if read is not None:  # the function read arguments' values: they select the program
            key = (*key, _values_key(leaves, read, ()))
        self._busy = True
        try:
            prog = programs.get(key)
            if prog is not None and len(programs) > 1:
                programs.move_to_end(key)
        finally:
            self._busy = False
            if self._dead:
                self._done()
        if prog is None:
            if self._record_only and self._last is not None:
                raise TraceError("trace(record_only=True): the function was recorded for dump(); "
                                 "it cannot run again. Call dump(), or trace without record_only.")
            prog, outputs, arg_values = self._record(bound, args, kwargs, leaves)
            if arg_values or read is not None:
                key = self._key_with_reads(key[:2], read, arg_values, leaves)
            self._keep(key, prog)
            return outputs
        self._last, self._last_owner = prog, owner
        if self._record_only:
            raise TraceError("trace(record_only=True): the function was recorded for dump(); it "
                             "cannot run again. Call dump(), or trace without record_only.")
        if self._imperative:
            shapes = _trace_option._use_symbolic_shape
            _trace_option._use_symbolic_shape = self._symbolic_shape  # as in its first call
            try:
                return self.__wrapped__(*bound, *args, **kwargs)
            finally:
                _trace_option._use_symbolic_shape = shapes
        if self._replays:
            if self._profile is not None:
                self._profile.calls += 1
            return replay(prog.optimized or prog, leaves, self._profile)
        return self._check(prog, bound, args, kwargs, leaves)

    # ----- the program cache -----
    def _key_with_reads(self, base, read, arg_values, leaves):
        """The cache key of a program just recorded for signature ``base`` whose call read
        arguments' values (``arg_values``: (leaf index, the value read), ...): ``base`` plus
        the values of the arguments that the programs of this signature read (the recorded
        values where this call read them)."""
        now = tuple(i for i, _ in arg_values)
        if read is None or not set(now) <= set(read):
            read = tuple(sorted(set(now) | set(read or ())))
            self._busy = True
            try:  # programs kept under fewer values would never be found again: drop them
                for k in [k for k in self._programs if k[:2] == base]:
                    del self._programs[k]
                self._read_args[_kept(base, self._on_argument_death())] = read
            finally:
                self._done()
        return (*base, _values_key(leaves, read, arg_values))

    def _keep(self, key, prog):
        key = _kept(key, self._on_argument_death())
        self._busy = True
        try:
            programs = self._programs
            programs[key] = prog
            self._last, self._last_owner = prog, key[0]
            if len(programs) > self._max_programs:
                if not self._warned_full:
                    self._warned_full = True
                    name = getattr(self.__wrapped__, "__qualname__", repr(self.__wrapped__))
                    logger.warning(
                        "trace of %s: more than %d call signatures (shapes, dtypes, argument "
                        "values, values of tensor arguments the function reads with .numpy(), "
                        ".item() or as shapes); the least recently used program is dropped and "
                        "recorded again if it comes back. Pad inputs to fewer shapes, read "
                        "logged values inside exclude_from_trace(), or raise "
                        "trace(max_programs=...)", name, self._max_programs)
                while len(programs) > self._max_programs:
                    self._drop_oldest()
        finally:
            self._done()

    def _on_argument_death(self):
        """The callback of the weak references to argument objects in the keys this trace
        keeps (see `_program._kept`): their programs go when they do."""
        if self._argument_death is None:
            self._argument_death = _forget_instance(self, _ARGUMENT)
        return self._argument_death

    def _drop_oldest(self):
        """Drop the least recently used program, and what its signature's arguments' values
        were read for when no other program keeps that signature (a signature seen once would
        otherwise stay in ``_read_args`` for good: a trace called with ever new shapes grew)."""
        key, _ = self._programs.popitem(last=False)
        base = key[:2]
        if base in self._read_args and not any(k[:2] == base for k in self._programs):
            del self._read_args[base]

    def _done(self):
        """End a change of the cache: drop the programs of instances that died meanwhile."""
        self._busy = False
        if self._dead:
            self._busy = True
            try:
                while self._dead:
                    owner = self._dead.pop()
                    if owner is _ARGUMENT:  # an argument object a key held weakly is gone
                        for table in (self._programs, self._read_args):
                            for key in [k for k in table if _holds_gone(k)]:
                                del table[key]
                        continue
                    ref = self._instances.get(owner)
                    if ref is not None and ref() is None:
                        del self._instances[owner]
                    for key in [k for k in self._programs if k[0] == owner]:
                        del self._programs[key]  # may free other instances: _dead grows
                    for key in [k for k in self._read_args if k[0] == owner]:
                        del self._read_args[key]
                    if self._last_owner == owner:
                        self._last = self._last_owner = None
            finally:
                self._busy = False

    # ----- first call of a signature -----
    def _record(self, bound, args, kwargs, leaves):
        """Record a call: (program, outputs, (leaf index, value), ... of the arguments whose
        values it read, which key the program)."""
        _not_nested()
        prog = _Program()
        if leaves is args:
            leaves = []
            prog.in_tree = _flatten((args, kwargs), leaves)
        else:
            prog.in_tree = _kept(_flatten((args, kwargs), []))
        rec = _Recorder(self, prog, self._live_externals(bound, args, kwargs)
                        if self._capture_as_const else ())
        rec.bind_args(leaves)
        if prog.symbolic_shape:  # x.shape gives sizes that say where they come from (dump)
            _trace_option._dim_source = rec
        try:
            outputs = self._run_under(rec, bound, args, kwargs)
        finally:
            _trace_option._dim_source = None
        rec.finish_recording(outputs)
        prog.sym_values = rec.sym_values
        if self._opt_level >= 1:
            arith_opt.plan_program(prog)  # (before compile: its new slots are the program's)
        prog.compile()
        if self._opt_level >= 1:
            prog.optimized = arith_opt.optimized(prog)
        return prog, outputs, rec.arg_values

    def _live_externals(self, bound, args, kwargs):
        """Ids of the tensors a ``capture_as_const`` recording reads live instead of capturing
        (none here; `xla_backend.xla_trace` keeps those of Module and Optimizer arguments)."""
        return ()

    def _run_under(self, hook, bound, args, kwargs):
        """Run the traced function with ``hook`` (a recorder or a checker) seeing every op and
        event, and shapes as upstream's trace shows them (``symbolic_shape``) for the call."""
        shapes = _trace_option._use_symbolic_shape
        _trace_option._use_symbolic_shape = self._symbolic_shape
        dispatch._trace_hook = hook
        try:
            out = self.__wrapped__(*bound, *args, **kwargs)
            if _trace_option._dim_source is hook:
                out = _sizes_as_tensors(out)
            return out
        finally:
            dispatch._trace_hook = None
            _trace_option._use_symbolic_shape = shapes

    # ----- symbolic=False or True: run again and compare -----
    def _check(self, prog, bound, args, kwargs, leaves):
        if dispatch._trace_hook is not None:
            _not_nested()
        if self._profile is None:
            checker = _Checker(prog)
        else:
            self._profile.calls += 1
            checker = _ProfilingChecker(prog)
            checker.profile = self._profile
        checker.bind_args(leaves)
        if prog.symbolic_shape or (prog.dyn_slots and prog.dyn_sizes):
            _trace_option._dim_source = checker  # sizes as the recording saw them (see
            # check._Checker.dim_slot)
        try:
            outputs = self._run_under(checker, bound, args, kwargs)
            _trace_option._dim_source = None
            checker.finish(outputs)
        finally:
            _trace_option._dim_source = None
            checker.release()
        return outputs

    # ----- upstream's other methods -----
    def dump(self, file, *, arg_names=None, output_names=None, **options):
        """Write the latest traced program to ``file`` (a path or a binary file object).

        Needs ``capture_as_const=True``. ``arg_names``: one name per tensor argument (default
        the tensor's own name, else ``arg_0``, ``arg_1``, ... for positional ones and
        ``kwarg_<name>`` for keyword ones);
        ``output_names``: one per output tensor (default: the output var's name, upstream's
        auto-name such as ``simple.linear.ADD`` or the tensor's own name, see
        `megengine.utils.naming`; a dict output uses its keys). Returns upstream's dump result
        (``nr_opr``, ``inputs``, ``outputs``, ...). Run it with
        `megengine.utils.comp_graph_tools.GraphInference`. See `megengine.jit.dump` for the
        format and for the options kept from upstream.

        With ``optimize_for_inference=True`` (the default), upstream's optimizer options:
        ``enable_io16xc32=True`` stores the values between operators as float16 and computes
        each operator in float32, ``enable_ioc16=True`` computes in float16 too; inputs are fed
        and outputs come back in their traced dtypes (`megengine.utils.network_optimize`). The
        layout options (``enable_nchw4``, ``enable_nchw44``, ...) and fusions
        (``enable_fuse_conv_bias_nonlinearity``, ...) are recorded in the metadata: they
        choose kernels of upstream's backends, which this engine has not. An unknown option
        raises, naming the valid ones. A ``GradManager.backward`` whose gradients the function
        returns is dumped with its backward (`megengine.jit.dump_backward`).
        """
        from .dump import dump_program
        return dump_program(self._dumped_program(), file, arg_names=arg_names,
                            output_names=output_names, _function=self.__wrapped__, **options)

    def _dumped_program(self):
        """The program `dump` writes: the latest recorded one (its optimized form)."""
        from .dump_format import DumpError
        if not self._capture_as_const:
            raise ValueError("you must specify capture_as_const=True at __init__ to use dump")
        if self._last is None:
            # (upstream 1.13 raises a ValueError here, earlier versions a RuntimeError:
            # DumpError is both, so code catching either still does)
            raise DumpError("trace.dump: nothing was recorded yet: call the traced function "
                            "once with example inputs (f(x), or f.trace(x)) before dump()")
        return self._last.optimized or self._last

    def get_profile(self):
        """Time per op type over the profiled calls: ``{"profiler": {"calls", "total_seconds",
        "ops": [{"name", "count", "seconds"}, ...]}}``, slowest first."""
        if self._profile is None:
            raise RuntimeError("trace.get_profile: create the trace with profiling=True")
        return {"profiler": self._profile.as_dict()}

    def trace(self, *args, **kwargs):
        """Run the function once to record it (upstream's explicit tracing call)."""
        return self(*args, **kwargs)


def _sizes_as_tensors(value):
    """The traced function's return value with each size it returned (``x.shape[0]``, a
    ``Shape`` or ``ShapeArray`` of them) made an int32 Tensor, as upstream's traced sizes are
    Tensors: a dumped program computes it at the shapes it runs at (recording only)."""
    t = type(value)
    if t is _trace_option.SymDim:
        return Tensor(value)
    if t is _trace_option.Shape or t is _trace_option.ShapeArray:
        return Tensor(value) if any(map(_trace_option.is_dim, value)) else value
    if t is tuple or t is list:
        return t(_sizes_as_tensors(v) for v in value)
    if t is dict:
        return {k: _sizes_as_tensors(v) for k, v in value.items()}
    return value


def _values_key(leaves, read, recorded):
    """The values of the tensor arguments ``leaves[i]`` for ``i`` in ``read`` as a hashable
    key; ``recorded`` ((i, value), ...) gives the value to use instead where a recording read
    it (an argument changed in place later in the call keys by the value the call read)."""
    given = dict(recorded)
    key = []
    for i in read:
        a = given.get(i)
        if a is None:
            a = _host(leaves[i]._data)
        key.append((i, a.shape, a.dtype.str, a.tobytes()))
    return tuple(key)


# what `_forget_instance` notes for an argument object that a kept key held weakly
_ARGUMENT = object()


def _forget_instance(tr, owner):
    """The callback of a weak reference to a traced method's instance (``owner`` its id), or to
    an argument object in a key (``owner`` `_ARGUMENT`): its programs go when it does. It holds
    the trace weakly, and only notes the death while the cache is being changed (garbage
    collection can run a callback in the middle of any allocation)."""
    tr_ref = weakref.ref(tr)

    def forget(ref):
        tr = tr_ref()
        if tr is not None:
            tr._dead.append(owner)
            if not tr._busy:
                tr._done()

    return forget


def _not_nested():
    if dispatch._trace_hook is not None:
        raise NotImplementedError(
            "nested trace: a traced function cannot be traced while another traced function "
            "is being recorded or checked (a without_host=True trace that has already recorded "
            "can be called inside one: it replays)")


@contextlib.contextmanager
def exclude_from_trace():
    """Run a block without recording (first call) or checking (later calls) its ops.

    For side work such as logging. Tensors it makes and the traced code then uses are treated
    as constants when the call is recorded; a checked call (``symbolic=False`` or ``True``)
    accepts them in place of any recorded input, so the block may compute differently from
    call to call (as upstream). Values read inside it are not guarded (see "Host reads" in the
    module docstring): log there. On a ``without_host=True`` replay the Python function, this
    block included, does not run.
    """
    hook = dispatch._trace_hook
    if isinstance(hook, _Checker) and hook.pc is None:  # inside a checked op's forward: its
        yield  # work passes untraced already (`check._Checker.__call__`)
        return
    dispatch._trace_hook = _ExcludedBlock(hook) if isinstance(hook, _Checker) else None
    try:
        yield
    finally:
        if hook is not None and not hook.failed:
            dispatch._trace_hook = hook


def is_tracing() -> bool:
    """True while a traced function runs its first (recording) call or a checked call
    (``symbolic=False`` or ``True``)."""
    hook = dispatch._trace_hook  # (a checked call's ``pc`` is None inside an op's forward,
    return isinstance(hook, _Hook) and getattr(hook, "pc", 0) is not None  # whose work is
    # untraced)
