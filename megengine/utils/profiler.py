"""`Profiler`: record every op the dispatcher runs (forward and backward) and write a Chrome trace.

While a `Profiler` runs, ``megengine.core.dispatch._profile_hook`` is set and each
``apply(op, *tensors)`` goes through it: the op is timed (host wall time, ``perf_counter_ns``)
and noted with its name, thread, device, input and output shapes and its simple parameters.
The name is the op's class, followed by what the op says of the call where it has a
``profile_label()``: a `PyTorchModule` call names the module that ran,
``TorchCall(net.body: Linear)``.
When an op is recorded for autodiff, its ``backward`` is wrapped on that op instance so the
backward pass appears too (as ``<Op>Backward``). Without a running profiler the engine pays one
global read per op and nothing else.

On GPU devices ops run asynchronously; with ``profile_device`` (the default, as upstream) the
profiler waits for the device after each op so the times are the ops' own; ``profile_device=0``
gives the host's launch times only.

The file is the Chrome trace format upstream writes (``<path>/<pid>.chrome_timeline.json``,
``{"traceEvents": [...]}`` with a ``Metadata`` event first): load it in ``chrome://tracing`` or
https://ui.perfetto.dev. Each op is one complete event (``"ph": "X"``, ``ts``/``dur`` in µs);
each `scope` is a begin/end pair.

``format="memory_flow.svg"`` (or both in ``formats``) draws ``<path>/<pid>.memory_flow.svg``:
each array an op returned (backward passes' gradients are not drawn) is a rectangle spanning
its lifetime (end of the op to the moment the array is freed) over its address range, the
unused address gaps left out (see ``megengine.utils._memory_flow``). Upstream's picture comes
from its C++ allocator; this one follows the arrays the ops return (a view counts as its own
array).

Differences from upstream: the files are written when the profiler stops (upstream writes them
when the Profiler object dies or at exit; the last recording is kept either way, and
`Profiler.dump` writes them again); ``sample_rate``,
``num_tensor_watch`` and ``enable_cupti`` are accepted and have no effect (there is no
allocator sampling nor CUPTI here). A trace's ``without_host=True`` replays are profiled too. Ops
that an op's own forward applies are part of that op's time, not events of their own. The hook
is process-wide: ops of other threads are recorded with their thread id.
"""
import json
import os
import re
import threading
import time
import weakref
from contextlib import ContextDecorator, contextmanager
from typing import List

from ..core import dispatch
from ..core.ops import ArgumentError
from ..logger import get_logger

__all__ = ["Profiler", "profile", "scope", "is_profiling", "merge_trace_events"]

logger = get_logger(__name__)

_running = None  # the Profiler that is recording, if any
_clock = time.perf_counter_ns
# op attributes worth showing in the trace: small values only (arrays stay out of the file)
_SIMPLE = (bool, int, float, str)


def _attrs(op):
    d = getattr(op, "__dict__", None)
    if not d:
        return None
    out = {k: v for k, v in d.items()
           if k[0] != "_" and k != "needs_input_grad" and type(v) in _SIMPLE}
    return out or None


def _op_name(op, suffix=""):
    """An op's event name: its class (and ``suffix``), followed by what the op says of this
    call when it has a ``profile_label()`` (a `PyTorchModule` call names the module that ran:
    ``TorchCall(net.body: Linear)``, ``TorchCallBackward(net.body: Linear)``)."""
    name = type(op).__name__.lstrip("_") + suffix
    label = getattr(type(op), "profile_label", None)
    return name if label is None else f"{name}({label(op)})"


def _shapes(tensors):
    return [tuple(t.shape) for t in tensors if t is not None]


class Profiler(ContextDecorator):
    r"""Profile the ops run in a block (``with Profiler():``) or a function (``@Profiler()``).

    Args:
        path: the directory the trace goes to, as ``<path>/<pid>.chrome_timeline.json``.
        format: ``"chrome_timeline.json"`` (a Chrome trace) or ``"memory_flow.svg"`` (the
            arrays' lifetimes over their addresses).
        formats: several formats (a list), instead of ``format``.
        with_backtrace, with_scopes: upstream's switches for Python backtraces and scope
            records in the trace; accepted, without effect (scopes are always recorded).
        profile_device: wait for a GPU after each op on it so its time is the op's own
            (default 1); 0 records launch times only.
        sample_rate, num_tensor_watch, enable_cupti: accepted as upstream; no effect here.

    Example::

        from megengine.utils.profiler import Profiler, scope

        profiler = Profiler("profile")
        with profiler:
            with scope("step"):
                loss = train_step(data, label)
        # profile/<pid>.chrome_timeline.json: open it in chrome://tracing

    Only the latest recording is kept: use one profiler block for the iterations of interest.
    """

    CHROME_TIMELINE = "chrome_timeline.json"
    MEMORY_FLOW = "memory_flow.svg"
    valid_options = {"sample_rate": 0, "profile_device": 1, "num_tensor_watch": 10,
                     "enable_cupti": 0}
    valid_formats = {"chrome_timeline.json", "memory_flow.svg"}
    # older upstream releases' arguments: accepted, without effect
    _legacy_options = ("topic", "align_time")

    def __init__(self, path: str = "profile", format: str = "chrome_timeline.json",
                 formats: List[str] = None, with_backtrace: bool = False,
                 with_scopes: bool = False, **kwargs) -> None:
        if not formats:
            formats = [format]
        if isinstance(formats, str):
            raise TypeError(f"Profiler: formats must be a list of formats, got the string "
                            f"{formats!r} (use format=... for one)")
        for f in formats:
            if f not in Profiler.valid_formats:  # (upstream asserts)
                raise ArgumentError(f"Profiler: unsupported format {f!r}; valid: "
                                    f"{sorted(Profiler.valid_formats)}")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Profiler: path must be a directory's path (a str), got "
                            f"{type(path).__name__} {path!r}")
        self._path = os.fspath(path)
        self._formats = list(formats)
        self.with_backtrace = with_backtrace  # (upstream's attribute; records nothing here)
        self._options = {}
        for opt, default in Profiler.valid_options.items():
            self._options[opt] = int(kwargs.pop(opt, default))
        for opt in Profiler._legacy_options:
            kwargs.pop(opt, None)
        if kwargs:
            raise TypeError(f"Profiler: unknown arguments {sorted(kwargs)}; it takes path, "
                            f"format, formats and {sorted(Profiler.valid_options)}")
        self._pid = "<PID>"
        self._records = []  # (kind, name, tid, start_ns, end_ns, args)
        self._start_ns = self._local_time_us = self._stop_ns = None
        self._blocks = []  # memory_flow.svg: one dict per array an op returned
        self._finalizers = []
        self._hook = self._on_apply  # made once: installed again after every op

    # ----- properties as upstream -----
    @property
    def path(self):
        fmt = (self._formats[0] if len(self._formats) == 1
               else "{" + ",".join(self._formats) + "}")
        return self.format_path(self._path, self._pid, fmt)

    @property
    def directory(self):
        return self._path

    @property
    def formats(self):
        return list(self._formats)

    def format_path(self, path, pid, format):
        return os.path.join(path, f"{pid}.{format}")

    # ----- recording -----
    def start(self):
        global _running
        if _running is not None:
            raise RuntimeError("Profiler.start: another Profiler is running; profilers do not "
                               "nest (stop the other one first)")
        if dispatch._profile_hook is not None:
            raise RuntimeError("Profiler.start: the dispatcher's profile hook is already taken")
        self._pid = os.getpid()
        self._records = []
        self._steps = 0
        self._blocks, self._finalizers = [], []
        self._watch_memory = Profiler.MEMORY_FLOW in self._formats
        self._local_time_us = time.time_ns() // 1000
        self._start_ns = _clock()
        self._stop_ns = None
        _running = self
        dispatch._profile_hook = self._hook
        return self

    def stop(self):
        global _running
        if _running is not self:
            raise RuntimeError("Profiler.stop: this profiler is not running")
        _running = None
        dispatch._profile_hook = None
        self._stop_ns = _clock()
        for f in self._finalizers:  # arrays freed from now on are past the picture's end
            f.detach()
        self._finalizers = []
        self.dump()

    def step(self):
        """Mark the end of a training step in the recording (a "step <n>" instant event on
        the timeline, n counting from 1 each recording), as upstream's; returns the
        profiler."""
        if _running is not self:
            raise RuntimeError("Profiler.step: this profiler is not recording; call it between "
                               "start() and stop() (inside its with block)")
        self._steps += 1
        self._records.append(("step", f"step {self._steps}", threading.get_ident(), _clock(),
                              None, None))
        return self

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __call__(self, func):
        func = super().__call__(func)
        func.__profiler__ = self
        return func

    def _on_apply(self, op, inputs):
        dispatch._profile_hook = None  # the op's own apply (and any it makes) runs plainly
        try:
            if dispatch._recording:
                self._wrap_backward(op)
            start = _clock()
            out = dispatch.apply(op, *inputs)
            outs = out if isinstance(out, tuple) else (out,)
            device = outs[0]._device if outs else getattr(op, "device", None)
            if self._options["profile_device"] and device and device[0] == "g":
                _synchronize()
            end = _clock()
        finally:
            if _running is self:
                dispatch._profile_hook = self._hook
        args = {"device": device, "inputs": _shapes(inputs), "outputs": _shapes(outs)}
        attrs = _attrs(op)
        if attrs:
            args["params"] = attrs
        name = _op_name(op)
        self._records.append(("op", name, threading.get_ident(), start, end, args))
        if self._watch_memory:
            for t in outs:
                if t is not None:
                    self._watch(name, t._data, end)
        return out

    def _watch(self, name, array, alloc_ns):
        """Note an op's output array for memory_flow.svg; its free time comes from a finalizer
        (which holds the block, never the array)."""
        ptr = getattr(getattr(array, "data", None), "ptr", None)  # CuPy device pointer
        if ptr is None:
            ptr = array.__array_interface__["data"][0]
        block = {"name": name, "shape": tuple(array.shape), "dtype": str(array.dtype),
                 "nbytes": int(array.nbytes), "addr": int(ptr), "alloc_ns": alloc_ns,
                 "free_ns": None}
        try:
            self._finalizers.append(weakref.finalize(array, _mark_freed, block))
        except TypeError:
            return  # an array type without weak references: its lifetime is unknown
        self._blocks.append(block)

    def _wrap_backward(self, op):
        # The wrapper reaches the op through a weak reference: a closure holding the op (or
        # its bound method) in the op's own __dict__ would be a cycle, and the arrays the op
        # saved for backward would wait for the garbage collector instead of going at once.
        try:
            ref = weakref.ref(op)
        except TypeError:
            return  # an op without weak references: its backward is not shown
        backward = type(op).backward
        name = _op_name(op, "Backward")
        profiler = self

        def timed_backward(*grads):
            if _running is not profiler:
                return backward(ref(), *grads)
            start = _clock()
            result = backward(ref(), *grads)
            end = _clock()
            profiler._records.append(("backward", name, threading.get_ident(), start, end,
                                      {"grads": [tuple(g.shape) for g in grads
                                                 if g is not None]}))
            return result

        try:
            op.backward = timed_backward  # this instance only: apply makes one op per call
        except AttributeError:
            pass  # an op without __dict__: its backward is not shown

    def _scope(self, phase, name):
        self._records.append(("scope" + phase, name, threading.get_ident(), _clock(), None,
                              None))

    # ----- output -----
    def trace_events(self):
        """The latest recording as a list of Chrome trace events (what `dump` writes)."""
        pid = self._pid
        base = self._start_ns or 0
        events = [{"name": "Metadata", "ph": "M", "pid": pid, "tid": 0,
                   "args": {"localTime": self._local_time_us, "engine": "megengine (numpy)"}},
                  {"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                   "args": {"name": f"megengine {pid}"}}]
        threads = {}
        for kind, name, tid, start, end, args in self._records:
            threads.setdefault(tid, None)
            ts = (start - base) / 1000.0
            if kind == "scopeB" or kind == "scopeE":
                events.append({"name": name, "ph": kind[-1], "ts": ts, "pid": pid, "tid": tid,
                               "cat": "scope"})
                continue
            if kind == "step":  # an instant across the process's rows
                events.append({"name": name, "ph": "i", "s": "p", "ts": ts, "pid": pid,
                               "tid": tid, "cat": "step"})
                continue
            event = {"name": name, "ph": "X", "ts": ts, "dur": (end - start) / 1000.0,
                     "pid": pid, "tid": tid, "cat": kind}
            if args:
                event["args"] = args
            events.append(event)
        names = {t.ident: t.name for t in threading.enumerate()}
        for tid in threads:
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                           "args": {"name": names.get(tid, f"thread {tid}")}})
        return events

    def dump(self):
        """Write the latest recording in each requested format (``<path>/<pid>.<format>``)."""
        if self._start_ns is None:
            return  # never started: nothing to write
        if not os.path.exists(self._path):
            os.makedirs(self._path)
        if not os.path.isdir(self._path):  # a file of that name: upstream warns and goes on
            logger.warning(f"{self._path} is not a directory, cannot write profiling results")
            return
        if Profiler.CHROME_TIMELINE in self._formats:
            path = self.format_path(self._path, self._pid, Profiler.CHROME_TIMELINE)
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"traceEvents": self.trace_events(), "displayTimeUnit": "ms"}, f,
                          ensure_ascii=False, separators=(",", ":"))
            logger.debug(f"profiling results written to {path}")
            if os.path.getsize(path) > 64 * 1024 * 1024:
                logger.warning("profiling results too large, maybe you are profiling multi "
                               "iters, consider attach profiler in each iter separately")
        if Profiler.MEMORY_FLOW in self._formats:
            from ._memory_flow import render

            path = self.format_path(self._path, self._pid, Profiler.MEMORY_FLOW)
            stop = self._stop_ns if self._stop_ns is not None else _clock()
            with open(path, "w", encoding="utf-8") as f:
                f.write(render(self._blocks, self._start_ns, stop))
            logger.debug(f"memory flow written to {path}")


def _mark_freed(block):
    block["free_ns"] = _clock()


def _synchronize():
    import cupy  # a GPU device means CuPy is there

    cupy.cuda.Device().synchronize()


@contextmanager
def scope(name):
    """Mark a named span (begin/end events) in the running profiler's trace; usable as a
    decorator too. Without a running profiler it costs nothing but the call."""
    profiler = _running
    if profiler is None:
        yield
        return
    profiler._scope("B", name)
    try:
        yield
    finally:
        if _running is profiler:
            profiler._scope("E", name)


def profile(*args, **kwargs):
    """``@profile`` on a function, or ``profile(path, ...)`` as `Profiler`'s shorter name."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return Profiler()(args[0])
    return Profiler(*args, **kwargs)


def is_profiling():
    """Whether a `Profiler` is recording now."""
    return _running is not None


def merge_trace_events(directory: str):
    """Merge the ``<pid>.chrome_timeline.json`` files in ``directory`` (one per process, e.g.
    the ranks of a distributed run) into ``merge.chrome_timeline.json``, aligning their clocks
    by each file's ``Metadata`` ``localTime``."""
    names = sorted(n for n in os.listdir(directory)
                   if re.fullmatch(r"\d+\.chrome_timeline\.json", n))
    if not names:
        raise FileNotFoundError(f"merge_trace_events: no <pid>.chrome_timeline.json files in "
                                f"{directory!r}")
    contents = []
    for n in names:
        with open(os.path.join(directory, n), encoding="utf-8") as f:
            content = json.load(f)
        events = content["traceEvents"] if isinstance(content, dict) else content
        meta = events[0]["args"] if events and events[0].get("name") == "Metadata" else None
        contents.append((events, meta))
    times = [m["localTime"] for _, m in contents if m is not None]
    earliest = min(times) if times else 0
    merged = []
    for events, meta in contents:
        shift = (meta["localTime"] - earliest) if meta is not None else 0
        for e in events:
            if e.get("name") == "Metadata":
                continue
            if "ts" in e:
                e["ts"] = e["ts"] + shift
            merged.append(e)
    path = os.path.join(directory, "merge.chrome_timeline.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"traceEvents": merged}, f, ensure_ascii=False, separators=(",", ":"))
    logger.info(f"profiling results written to {path}")
    return path
