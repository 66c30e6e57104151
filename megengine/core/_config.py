"""Execution switches (upstream's `core._config`): module properties, `_override`, compute mode.

``megengine.config`` shows the same switches. They are module *properties*, as upstream makes
them with ``mprop``: ``mge.config.benchmark_kernel = True`` runs a setter that checks the value
and applies it. What each switch does in this engine:

- ``benchmark_kernel`` / ``deterministic_kernel``: choose cuDNN's algorithms for the
  convolutions, pooling and batch norm that run on ATen's kernels on CUDA devices (they become
  ``torch.backends.cudnn.benchmark`` / ``.deterministic``, now if torch is loaded, else when the
  bridge loads it). The CPU kernels (oneDNN) have a single algorithm per call and are
  deterministic, so on CPUs neither switch changes anything.
- ``_compute_mode``: checked (``"default"`` or ``"float32"``) and kept;
  ``_effective_compute_mode`` tells an op which mode applies (its own argument, unless the
  switch says ``"float32"``). Model code also writes the module global directly
  (``_config.__compute_mode = "float32"``); both spellings work. ``"float32"`` asks float16
  matmuls to accumulate in float32, which this engine's matmul does in either mode (numpy's
  float16 matmul accumulates in float32: ``tests/test_config.py`` checks it), so both modes
  give upstream's ``"float32"`` result; float16 convolutions accumulate as ATen's kernels do.
- ``async_level``: checked (0, 1 or 2) and kept. This engine runs every op when it is called,
  so errors are always raised at the call that caused them (upstream's level 0) whatever the
  level says.
- ``disable_memory_forwarding`` and ``benchmark_with_subprocess``: checked and kept; they
  steer optimisations of upstream's C++ runtime (storage sharing between tensors, algorithm
  benchmarks in a child process) that users cannot observe and this engine does not have.
- ``_conv_format``: ``"default"``, ``"NCHW"`` or ``"NHWC"``; when not ``"default"`` it wins
  over the ``format`` argument of the image functions that take one (``F.vision.remap``,
  ``warp_perspective``, ``warp_affine``), as upstream. The layouts of upstream's special
  kernels (``NCHW4``, ``NHWCD4``, ...) are refused, and so is ``"NHWC"`` by the convolution
  and pooling functions, whose kernels here are NCHW only (upstream's take NHWC there).
- ``_auto_format_convert`` (default True, as upstream's runtime): an ``"nhwc"`` tensor shows
  and behaves as its NCHW tensor; off, it shows its NHWC array (``shape``, ``numpy()``) and
  layout ops work on that array, as upstream's (`megengine.core.format`).
- ``_bn_format``: only its default (``"dim_1c11"``). ``"dim_111c"`` changes what programs
  compute on upstream (batch-norm parameters shaped ``(1, 1, 1, C)``), which this engine's
  batch norm does not do, so setting it raises instead of computing something else.
"""
import sys
import types
from contextlib import contextmanager

from . import format as _format

__all__ = [
    "benchmark_kernel", "benchmark_with_subprocess", "deterministic_kernel", "async_level",
    "disable_memory_forwarding", "_compute_mode", "_conv_format", "_auto_format_convert",
    "_override",
]

# "default" rather than None: None means "leave unchanged" in _reset_execution_config.
# Model-zoo code assigns `_config.__compute_mode` itself, so this stays a plain module global
# that ops read at call time (a name mangled only inside class bodies; none is used here).
__compute_mode = "default"
__conv_format = "default"
__bn_format = "dim_1c11"
_benchmark_kernel = False
_deterministic_kernel = False
_benchmark_with_subprocess = False
_async_level = 2
_disable_memory_forwarding = False

_COMPUTE_MODES = ("default", "float32")
_CONV_FORMATS = ("default", "NCHW", "NHWC")
_BN_FORMATS = ("dim_1c11", "dim_111c")


def _check_bool(name, value):
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise TypeError(f"megengine.config.{name} must be True or False, got {value!r}")
    return bool(value)


def _check_async_level(name, value):
    if isinstance(value, bool) or value not in (0, 1, 2):
        from .ops import ArgumentError, ArgumentTypeError  # (upstream: TypeError, assert)

        raise (ArgumentError if isinstance(value, int) else ArgumentTypeError)(
            f"megengine.config.{name} must be 0, 1 or 2, got {value!r}")
    return int(value)


def _sync_torch_backends(torch=None):
    """Hand the cuDNN switches to torch: now if it is loaded, else the bridge calls this."""
    torch = torch if torch is not None else sys.modules.get("torch")
    cudnn = getattr(getattr(torch, "backends", None), "cudnn", None)
    if cudnn is not None:
        cudnn.benchmark = _benchmark_kernel
        cudnn.deterministic = _deterministic_kernel


def _bool_switch(name, doc, then=None):
    """The getter and setter of the True/False switch ``name``, kept in the module global
    ``_<name>``; ``doc`` is the getter's (the property's) docstring, ``then`` runs after each
    set."""
    key = "_" + name

    def getter(mod):
        return globals()[key]

    def setter(mod, option):
        globals()[key] = _check_bool(name, option)
        if then is not None:
            then()

    getter.__name__, setter.__name__ = f"_get{key}", f"_set{key}"
    getter.__qualname__, setter.__qualname__ = getter.__name__, setter.__name__
    getter.__doc__ = doc
    return getter, setter


_get_benchmark_kernel, _set_benchmark_kernel = _bool_switch(
    "benchmark_kernel",
    "Try the candidate algorithms on the device and keep the fastest (default False).",
    _sync_torch_backends)
_get_deterministic_kernel, _set_deterministic_kernel = _bool_switch(
    "deterministic_kernel",
    "Use only algorithms that give bit-identical results run to run (default False).",
    _sync_torch_backends)
_get_benchmark_with_subprocess, _set_benchmark_with_subprocess = _bool_switch(
    "benchmark_with_subprocess",
    "Run algorithm benchmarks in a child process (upstream's C++ runtime only).")
_get_disable_memory_forwarding, _set_disable_memory_forwarding = _bool_switch(
    "disable_memory_forwarding",
    "Forbid tensors to share storage (upstream's runtime optimisation; default False).")


def _get_async_level(mod):
    """How late errors may surface: 0 at the call, 2 (default) possibly later."""
    return _async_level


def _set_async_level(mod, level):
    global _async_level
    _async_level = _check_async_level("async_level", level)


def _get_compute_mode(mod):
    """Precision of matmul intermediates: "default", or "float32" for float16 operands."""
    return globals()["__compute_mode"]


def _set_compute_mode(mod, mode):
    mode = str(getattr(mode, "name", mode)).lower()
    if mode not in _COMPUTE_MODES:
        raise ValueError(f"megengine.config._compute_mode must be one of {_COMPUTE_MODES}, "
                         f"got {mode!r}")
    globals()["__compute_mode"] = mode


def _check_conv_format(fmt):
    fmt = str(fmt)
    if fmt.upper() in _CONV_FORMATS[1:]:
        fmt = fmt.upper()
    if fmt not in _CONV_FORMATS:
        raise ValueError(f"megengine.config._conv_format must be one of {_CONV_FORMATS}, got "
                         f"{fmt!r} (upstream's special kernel layouts are not available here)")
    return fmt


def _get_conv_format(mod):
    """Image layout for the functions that take a ``format``: "default" (each function's
    own argument), "NCHW" or "NHWC"."""
    return globals()["__conv_format"]


def _set_conv_format(mod, fmt):
    globals()["__conv_format"] = _check_conv_format(fmt)


def _effective_conv_format(function_param, what, supported=("NCHW", "NHWC")):
    """The layout an image function uses: the global switch wins over its own ``format``
    argument unless the switch says "default"; one the function cannot do raises."""
    fmt = str(_get_actual_op_param(function_param, globals()["__conv_format"])).upper()
    if fmt not in supported:
        raise ValueError(f"{what}: format {fmt!r} (megengine.config._conv_format is "
                         f"{globals()['__conv_format']!r}) is not supported; this function "
                         f"takes {' or '.join(supported)}")
    return fmt


def _get_bn_format(mod):
    """Batch-norm parameter layout: "dim_1c11" (NCHW, default) or "dim_111c" (NHWC)."""
    return globals()["__bn_format"]


def _set_bn_format(mod, fmt):
    if fmt not in _BN_FORMATS:
        raise ValueError(f"megengine.config._bn_format must be one of {_BN_FORMATS}, got {fmt!r}")
    if fmt != "dim_1c11":
        raise ValueError("megengine.config._bn_format: only 'dim_1c11' (NCHW parameters) is "
                         "supported here; this engine's batch norm has no NHWC layout")
    globals()["__bn_format"] = fmt


def _get_auto_format_convert(mod):
    """Show "nhwc" tensors as the NCHW tensors they stand for (default True)."""
    return _format.auto_convert


def _set_auto_format_convert(mod, option):
    _format.auto_convert = _check_bool("_auto_format_convert", option)


def get_auto_format_convert() -> bool:
    """The ``_auto_format_convert`` switch (upstream exports this function from here too)."""
    return _format.auto_convert


def set_auto_format_convert(option: bool) -> bool:
    """Set the ``_auto_format_convert`` switch; returns the previous value."""
    previous = _format.auto_convert
    _set_auto_format_convert(None, option)
    return previous


class PropertyModule(types.ModuleType):
    """The class of a module whose switches are properties (what upstream gets from ``mprop``):
    ``dir()`` and tab completion list the properties too, as upstream's do."""

    def __dir__(self):
        properties = {name for cls in type(self).__mro__ for name, value in vars(cls).items()
                      if isinstance(value, property)}
        return sorted(set(super().__dir__()) | properties)


class ConfigModule(PropertyModule):
    """`megengine.config`'s module class: its switches are properties."""

    benchmark_kernel = property(_get_benchmark_kernel, _set_benchmark_kernel)
    deterministic_kernel = property(_get_deterministic_kernel, _set_deterministic_kernel)
    benchmark_with_subprocess = property(_get_benchmark_with_subprocess,
                                         _set_benchmark_with_subprocess)
    async_level = property(_get_async_level, _set_async_level)
    disable_memory_forwarding = property(_get_disable_memory_forwarding,
                                         _set_disable_memory_forwarding)
    _compute_mode = property(_get_compute_mode, _set_compute_mode)
    _conv_format = property(_get_conv_format, _set_conv_format)
    _bn_format = property(_get_bn_format, _set_bn_format)
    _auto_format_convert = property(_get_auto_format_convert, _set_auto_format_convert)


def _reset_execution_config(benchmark_kernel=None, deterministic_kernel=None, async_level=None,
                            compute_mode=None, conv_format=None):
    """Set the given switches (None leaves one as it is); returns the previous five values."""
    mod = sys.modules[__name__]
    previous = (_benchmark_kernel, _deterministic_kernel, _async_level, _get_compute_mode(mod),
                _get_conv_format(mod))
    # check every value before changing any, so a bad one changes nothing
    for name, value, check in (("benchmark_kernel", benchmark_kernel, _check_bool),
                               ("deterministic_kernel", deterministic_kernel, _check_bool),
                               ("async_level", async_level, _check_async_level)):
        if value is not None:
            check(name, value)
    if compute_mode is not None and str(getattr(compute_mode, "name", compute_mode)).lower() \
            not in _COMPUTE_MODES:
        raise ValueError(f"compute_mode must be one of {_COMPUTE_MODES}, got {compute_mode!r}")
    if conv_format is not None:
        _check_conv_format(conv_format)
    if benchmark_kernel is not None:
        _set_benchmark_kernel(mod, benchmark_kernel)
    if deterministic_kernel is not None:
        _set_deterministic_kernel(mod, deterministic_kernel)
    if async_level is not None:
        _set_async_level(mod, async_level)
    if compute_mode is not None:
        _set_compute_mode(mod, compute_mode)
    if conv_format is not None:
        _set_conv_format(mod, conv_format)
    return previous


@contextmanager
def _override(benchmark_kernel=None, deterministic_kernel=None, async_level=None,
              compute_mode=None, conv_format=None):
    """Set switches inside a ``with`` block (or a decorated function) and restore them after.

    ::

        with mge.config._override(compute_mode="float32", benchmark_kernel=True):
            ...
    """
    previous = _reset_execution_config(benchmark_kernel, deterministic_kernel, async_level,
                                       compute_mode, conv_format)
    try:
        yield
    finally:
        _reset_execution_config(*previous)


# Upstream's runtime options (`megengine.core.get_option` / `set_option`) and their defaults.
# "async_level" and "disable_memory_forwarding" are the config switches above (one state);
# the others tune upstream's C++ interpreter (DTR rematerialisation, host computation of
# shapes, worker error capture) and are kept without effect here.
_OPTIONS = {"enable_drop": 0, "max_recompute_time": 1, "catch_worker_execption": 1,
            "enable_host_compute": 1, "record_computing_path": 0, "enable_dtr_auto_drop": 0,
            "enable_dtr_sqrt_sampling": 0, "dtr_eviction_threshold": 0,
            "dtr_evictee_minimum_size": 1 << 20, "enable_sqrt_sampling": 0, "buffer_length": 8}
_SWITCH_OPTIONS = {"async_level": (_get_async_level, _set_async_level),
                   "disable_memory_forwarding": (_get_disable_memory_forwarding,
                                                 _set_disable_memory_forwarding)}


def get_option(name: str) -> int:
    """The value of runtime option ``name`` (upstream's ``megengine.core.get_option``)."""
    mod = sys.modules[__name__]
    if name in _SWITCH_OPTIONS:
        return int(_SWITCH_OPTIONS[name][0](mod))
    if name not in _OPTIONS:
        raise ValueError(f"get_option: unknown option {name!r}; known: "
                         f"{sorted([*_OPTIONS, *_SWITCH_OPTIONS])}")
    return _OPTIONS[name]


def set_option(name: str, value: int):
    """Set runtime option ``name`` (an int); see ``get_option``."""
    mod = sys.modules[__name__]
    if name in _SWITCH_OPTIONS:
        return _SWITCH_OPTIONS[name][1](mod, value)
    if name not in _OPTIONS:
        raise ValueError(f"set_option: unknown option {name!r}; known: "
                         f"{sorted([*_OPTIONS, *_SWITCH_OPTIONS])}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"set_option: {name} takes an int >= 0, got {value!r}")
    _OPTIONS[name] = value


@contextmanager
def option(name: str, value: int):
    """Set runtime option ``name`` inside a ``with`` block (upstream's
    ``megengine.core.option``); the previous value comes back when the block ends, also when
    it raises."""
    old = get_option(name)
    set_option(name, value)
    try:
        yield
    finally:
        set_option(name, old)


def _get_actual_op_param(function_param, config_param):
    """An op's own argument unless the global switch says something other than "default"."""
    return function_param if config_param == "default" else config_param


def _effective_compute_mode(function_param="default"):
    """The compute mode an op should use: the global switch wins over the op's "default"."""
    mode = _get_actual_op_param(function_param, globals()["__compute_mode"])
    return str(getattr(mode, "name", mode)).lower()


sys.modules[__name__].__class__ = ConfigModule
