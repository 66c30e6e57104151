"""`trace`: record a function's ops on the first call of each signature; later calls are checked
against the record (``symbolic=False``) or replay it without running the Python function
(``symbolic=True`` or ``without_host=True``).

How it works. While a traced function runs for the first time, ``dispatch._trace_hook`` is a
`_Recorder`: every ``apply(op, *tensors)`` goes through it. It notes, per op, a pristine copy
of the op (taken before ``forward`` stores anything on it), where each input came from and the
slots of the outputs. A value's source ("slot") is one of

- an argument: a Tensor found in the arguments (through tuples, lists and dicts);
- an output of an earlier op (or a detached alias of one: ``t.detach()``);
- an external tensor: one the function did not make (a Parameter, a buffer, a global). It is
  kept by reference and read live on replay, so in-place updates (optimizers, ``load_state_dict``)
  are seen. With ``capture_as_const=True`` its value at trace time is used instead;
- the ``.grad`` of a tensor (read live: gradients are new tensors on every backward);
- a constant: a tensor made inside the function from Python data (``x * 2``,
  ``mge.tensor(np_array)``), told apart from externals because nothing outside the function
  holds it once the call returns. Its value is captured;
- an output of an event (below).

Besides ops, the record holds *events*: calls that change state without being ops. The engine
announces them through ``dispatch._trace_hook.event(fn, *args)`` (see "Hooks" below):
``GradManager.record/release/backward``, ``Optimizer.step/clear_grad/zero_grad`` and the
in-place tensor writes ``Tensor._inplace`` (``p -= lr * g``, ``x[i] = v``) and ``Tensor._reset``
(``set_value``). An event runs with the hook off (the ops inside a backward or an optimizer step
are not recorded; they run again when the event is replayed) and is replayed by calling the same
function on the same objects, with traced tensors substituted.

Signatures. A trace keeps one program per call signature: the structure of the arguments
(tuples, lists, dicts, keyword names), each tensor's shape, dtype and device, and the value of
each non-tensor argument. A call with a signature not seen before is recorded anew (as
upstream re-traces); the earlier programs stay and serve their signatures.

Replay (``symbolic=True`` or ``without_host=True``, later calls of a known signature, see
`replay`): each step runs on fresh op copies through ``apply`` (so a recording GradManager still
builds the autodiff graph), events are called again, and the outputs are rebuilt. The Python
function does not run: its Python side effects (prints, ``.numpy()`` reads, appending to lists,
data-dependent branches) happen when a signature is recorded only.

Checking (``symbolic=False``, later calls of a known signature, see `record`): the function runs
normally and each op and event is compared with the record (op type and parameters, input
sources, input shapes and dtypes); the first difference raises `TraceMismatchError`. Its job is
to prove a function traceable.

Files: `_program` (the data), `record` (record and check), `replay`, `dump` (write a program
to a file; `megengine.utils.comp_graph_tools` loads and runs it), this file (the public API).

Hooks. The engine's side of the contract is one global read per call, ``dispatch._trace_hook``,
checked in ``apply`` and at the start of each event method::

    if dispatch._trace_hook is not None:  # megengine.jit.trace records this call as an event
        return dispatch._trace_hook.event(GradManager.backward, self, y, dy)

Nothing is patched. Tracing is not thread-safe: one traced call runs at a time.
"""
import contextlib
import functools
import inspect

from ..core import _trace_option, dispatch
from ..core.tensor import Tensor
from ._program import TraceError, TraceMismatchError, _flatten, _Program
from .record import _ExcludedBlock, _Recorder
from .replay import Profile, replay

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
    device, each non-tensor argument's value): a call with a new signature (a new batch size,
    another keyword argument) runs the function and records it again, as upstream re-traces.

    ``symbolic=False`` (upstream's default): later calls of a known signature run the function
    again and check that it applies the same ops as the recorded call, to values from the same
    places; the first difference raises `TraceMismatchError` (``str(e)`` is upstream's
    ``"trace error because <reason>"``, ``e.detail`` names the op and the values). It runs at
    eager speed and proves a function traceable.

    ``symbolic=True`` or ``without_host=True``: later calls of a known signature do not run the
    Python function; they replay the recorded ops and events (GradManager record/backward/
    release, optimizer steps, in-place writes) on the new arguments. Parameters and other tensors
    from outside the function are read live, so optimizer updates are seen. Python code in the
    function (prints, ``.numpy()`` reads, branches on values, tensors made from Python or numpy
    data, ``megengine.random`` draws, which are such data) runs at recording only: what it made
    is a constant of the program. Ops that draw random numbers in their forward (dropout) draw
    fresh ones on every replay.

    ``capture_as_const=True``: tensors from outside the function are captured by value at trace
    time; later changes to them are not seen. `dump` needs it.

    ``record_only=True``: for `dump` only (implies ``capture_as_const``); the first call records
    (this engine records by running the function once) and later calls raise.

    ``imperative=True``: every call runs the function eagerly; the first call of each signature
    is still recorded, so `dump` works (upstream's debugging mode runs imperatively too).

    ``profiling=True``: replays and checked calls time each op; `get_profile` returns the sums.

    Accepted for upstream's graph compiler, without effect here because there is no graph
    compiler (the program runs op by op on numpy/CuPy): ``opt_level`` (0-3, checked),
    ``sublinear_memory_config``, ``dtr_config``, ``graph_opt_config``, and ``symbolic_shape``
    (shapes are concrete tuples in this engine: each shape signature has its own program).

    Differences from upstream, by design of this fork: ``symbolic=True`` replays without Python
    (upstream reruns the Python function against its compiled graph; use ``symbolic=False`` for
    that check); the first call of a signature runs eagerly, so values can be read in it; and
    `exclude_from_trace` regions do not run on a replay.
    """

    def __new__(cls, *args, **kwargs):
        if not args and "function" not in kwargs:
            return functools.partial(cls, **kwargs)  # @trace(symbolic=True)
        return super().__new__(cls)

    def __init__(self, function, symbolic=False, capture_as_const=False, record_only=False,
                 sublinear_memory_config=None, dtr_config=None, profiling=False, opt_level=2,
                 graph_opt_config=None, symbolic_shape=None, without_host=False,
                 imperative=False):
        if not callable(function):
            raise TypeError(f"trace: expected a function to trace, got {type(function).__name__}")
        if not isinstance(opt_level, int) or isinstance(opt_level, bool) or \
                not 0 <= opt_level <= 3:
            raise ValueError(f"trace: opt_level must be an int from 0 to 3, got {opt_level!r}")
        self.__wrapped__ = function
        if inspect.isfunction(function) or inspect.ismethod(function):
            functools.update_wrapper(self, function, updated=())
        self._symbolic = bool(symbolic)
        self._without_host = bool(without_host)
        self._replays = self._symbolic or self._without_host
        self._record_only = bool(record_only)
        self._capture_as_const = bool(capture_as_const) or self._record_only
        self._imperative = bool(imperative)
        self._opt_level = opt_level
        self._symbolic_shape = (_trace_option.use_symbolic_shape() if symbolic_shape is None
                                else bool(symbolic_shape))
        self._profile = Profile() if profiling else None
        self._by_shapes = {}  # positional-tensor calls: ((shape, dtype, device), ...) -> program
        self._by_tree = []  # other calls: (argument tree, program), compared with ==
        self._last = None  # the program of the latest call: what dump writes

    def __get__(self, obj, objtype=None):
        # @trace on a method: bind the instance (the instance is part of the signature)
        return self if obj is None else functools.partial(self, obj)

    def __repr__(self):
        name = getattr(self.__wrapped__, "__qualname__", repr(self.__wrapped__))
        n = len(self._by_shapes) + len(self._by_tree)
        return f"<trace of {name} (symbolic={self._symbolic}, {n} traced signatures)>"

    @property
    def _program(self):
        return self._last

    def __call__(self, *args, **kwargs):
        key = None
        if not kwargs and all(isinstance(a, Tensor) for a in args):
            key = tuple((a._data.shape, a._data.dtype, a._device) for a in args)
        if key is not None:
            prog, leaves = self._by_shapes.get(key), args
        else:
            leaves = []
            tree = _flatten((args, kwargs), leaves)
            prog = next((p for t, p in self._by_tree if t == tree), None)
        if prog is None:
            if self._record_only and self._last is not None:
                raise TraceError("trace(record_only=True): the function was recorded for dump(); "
                                 "it cannot run again. Call dump(), or trace without record_only.")
            prog, outputs = self._record(args, kwargs, leaves)
            if key is not None:
                self._by_shapes[key] = prog
            else:
                self._by_tree.append((prog.in_tree, prog))
            self._last = prog
            return outputs
        self._last = prog
        if self._record_only:
            raise TraceError("trace(record_only=True): the function was recorded for dump(); it "
                             "cannot run again. Call dump(), or trace without record_only.")
        if self._imperative:
            return self.__wrapped__(*args, **kwargs)
        if self._replays:
            if self._profile is not None:
                self._profile.calls += 1
            return replay(prog, leaves, self._profile)
        return self._check(prog, args, kwargs, leaves)

    # ----- first call of a signature -----
    def _record(self, args, kwargs, leaves):
        _not_nested()
        prog = _Program()
        if leaves is args:
            leaves = []
            prog.in_tree = _flatten((args, kwargs), leaves)
        else:
            prog.in_tree = _flatten((args, kwargs), [])
        rec = _Recorder(self, prog, checking=False)
        rec.bind_args(leaves)
        dispatch._trace_hook = rec
        try:
            outputs = self.__wrapped__(*args, **kwargs)
        finally:
            dispatch._trace_hook = None
        rec.finish_recording(outputs)
        prog.compile()
        return prog, outputs

    # ----- symbolic=False: run again and compare -----
    def _check(self, prog, args, kwargs, leaves):
        _not_nested()
        rec = _Recorder(self, prog, checking=True)
        rec.bind_args(leaves)
        if self._profile is not None:
            self._profile.calls += 1
            rec.profile = self._profile
        dispatch._trace_hook = rec
        try:
            outputs = self.__wrapped__(*args, **kwargs)
        finally:
            dispatch._trace_hook = None
        rec.finish_checking(outputs)
        return outputs

    # ----- upstream's other methods -----
    def dump(self, file, *, arg_names=None, output_names=None, **options):
        """Write the latest traced program to ``file`` (a path or a binary file object).

        Needs ``capture_as_const=True``. ``arg_names``: one name per tensor argument (default
        ``arg_0``, ``arg_1``, ... for positional ones and ``kwarg_<name>`` for keyword ones);
        ``output_names``: one per output tensor (default ``output_0``, ...; a dict output uses
        its keys). Run it with `megengine.utils.comp_graph_tools.GraphInference`. See
        `megengine.jit.dump` for the format and for the options kept from upstream.
        """
        from .dump import dump_program
        if not self._capture_as_const:
            raise ValueError("you must specify capture_as_const=True at __init__ to use dump")
        if self._last is None:
            raise RuntimeError("should do record first before dump")
        return dump_program(self._last, file, arg_names=arg_names, output_names=output_names,
                            **options)

    def get_profile(self):
        """Time per op type over the profiled calls: ``{"profiler": {"calls", "total_seconds",
        "ops": [{"name", "count", "seconds"}, ...]}}``, slowest first."""
        if self._profile is None:
            raise RuntimeError("trace.get_profile: create the trace with profiling=True")
        return {"profiler": self._profile.as_dict()}

    def trace(self, *args, **kwargs):
        """Run the function once to record it (upstream's explicit tracing call)."""
        return self(*args, **kwargs)


def _not_nested():
    if dispatch._trace_hook is not None:
        raise NotImplementedError(
            "nested trace: a traced function cannot be traced while another traced function "
            "is being recorded or checked (a symbolic=True trace that has already recorded can "
            "be called inside one)")


@contextlib.contextmanager
def exclude_from_trace():
    """Run a block without recording (first call) or checking (symbolic=False) its ops.

    For side work such as logging. Tensors it makes and the traced code then uses are treated
    as constants when the call is recorded; a checked call (``symbolic=False``) accepts them in
    place of any recorded input, so the block may compute differently from call to call (as
    upstream). On a ``symbolic=True`` replay the Python function, this block included, does
    not run.
    """
    hook = dispatch._trace_hook
    dispatch._trace_hook = (_ExcludedBlock(hook) if isinstance(hook, _Recorder) and hook.checking
                            else None)
    try:
        yield
    finally:
        if hook is not None and not hook.failed:
            dispatch._trace_hook = hook


def is_tracing() -> bool:
    """True while a traced function runs its first (recording) call or a checked call."""
    return isinstance(dispatch._trace_hook, _Recorder)
