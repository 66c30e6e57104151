"""`megengine.jit`: `trace` records a function's ops once per call signature, then checks or
replays them; `trace.dump` writes a recorded program for `megengine.utils.comp_graph_tools`;
`xla_trace` is upstream's XLA trace, run here as a ``without_host`` replay (no XLA)."""
import numbers

from .partial_tracing import partial_trace
from .shape_guards import ShapeGuardError
from .tracing import (TraceError, TraceMismatchError, exclude_from_trace, is_tracing,
                      set_symbolic_shape, trace)
from .xla_backend import xla_trace

__all__ = ["trace", "xla_trace", "TraceError", "TraceMismatchError", "exclude_from_trace",
           "is_tracing", "partial_trace", "set_symbolic_shape", "ShapeGuardError",
           "SublinearMemoryConfig",
           "DTRConfig", "GraphOptimizationConfig"]


class _Config:
    """Options of upstream's graph compiler: accepted for compatibility, without effect here."""

    def __init__(self, **options):
        self.__dict__.update(options)

    def __repr__(self):
        items = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({items})"


def _check_options(what, least, **options):
    """Check numeric options as upstream's constructors assert them: each a number (else
    ArgumentTypeError: upstream's comparison raises TypeError) of at least ``least`` (else
    ArgumentError: upstream's AssertionError)."""
    from ..core.ops import ArgumentError, ArgumentTypeError

    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ArgumentTypeError(f"{what}: {name} must be a number, got "
                                    f"{type(value).__name__} {value!r}")
        if value < least:
            raise ArgumentError(f"{what}: {name} must be >= {least}, got {value!r}")


class SublinearMemoryConfig(_Config):
    def __init__(self, thresh_nr_try=10, genetic_nr_iter=0, genetic_pool_size=20,
                 lb_memory_mb=0, num_worker=None):
        _check_options("SublinearMemoryConfig", 0, thresh_nr_try=thresh_nr_try,
                       genetic_nr_iter=genetic_nr_iter, genetic_pool_size=genetic_pool_size)
        if num_worker is not None:
            _check_options("SublinearMemoryConfig", 1, num_worker=num_worker)
        super().__init__(thresh_nr_try=thresh_nr_try, genetic_nr_iter=genetic_nr_iter,
                         genetic_pool_size=genetic_pool_size, lb_memory_mb=lb_memory_mb,
                         num_worker=num_worker)


class DTRConfig(_Config):
    def __init__(self, eviction_threshold=0, evictee_minimum_size=1 << 20,
                 recomp_memory_factor=1, recomp_time_factor=1):
        # (upstream also refuses its own default eviction_threshold=0: accepted here)
        _check_options("DTRConfig", 0, eviction_threshold=eviction_threshold,
                       evictee_minimum_size=evictee_minimum_size,
                       recomp_memory_factor=recomp_memory_factor,
                       recomp_time_factor=recomp_time_factor)
        super().__init__(eviction_threshold=eviction_threshold,
                         evictee_minimum_size=evictee_minimum_size,
                         recomp_memory_factor=recomp_memory_factor,
                         recomp_time_factor=recomp_time_factor)


class GraphOptimizationConfig(_Config):
    def __init__(self):
        super().__init__(jit_fuse_dimshuffle=None, jit_fuse_reduce=None)
