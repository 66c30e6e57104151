"""The one place where engine arrays become torch tensors for ATen's kernels, and back, without copies.

Convolution, pooling and batch norm run on ATen (oneDNN / its own vectorised kernels on the CPU,
cuDNN on CUDA) through the bridge's zero-copy views (`megengine.core.torch_bridge`). The op
around each kernel (its autodiff, dtype rules, errors) stays ours. torch is imported at the first
kernel call, never by ``import megengine`` or ``import megengine.functional``.
Cross entropy runs on ATen's general path for CUDA arrays and takes ATen's log_softmax for
(N, C) logits on the CPU; gelu, layer norm, and softmax / log_softmax over long rows on both
devices (`use_aten`).

Threads: the kernels run on torch's intra-op thread pool, so they follow torch's own setting
(``OMP_NUM_THREADS`` at start-up, ``torch.set_num_threads`` at run time), as upstream MegEngine's
CPU kernels follow its device's thread count. `set_num_threads` / `get_num_threads` here set and
read that one pool without the caller importing torch. The engine's matrix products large
enough for numpy's BLAS to thread come here too (family "gemm"), so that two pools do not take
turns spinning on the same cores; numpy's linear algebra (matinv, svd) and einsum chains of
three or more operands still run on numpy's BLAS (docs/compatibility.rst, "CPU threads").
"""
import contextlib
import os

import numpy as np

from ..core import dispatch as _dispatch

__all__ = ["aten", "bridge", "op", "ops", "view", "memory_view", "exclusive_views", "array", "written",
           "fresh_gradient", "torch_module", "set_num_threads", "get_num_threads", "use_aten",
           "forced", "is_forced", "avoided", "LayerViews", "layer_views", "binary",
           "pooled_concat", "pooled_reshape", "half_cast"]

_torch = None
_aten = None
_to_torch = None
_from_torch = None
_bridge = None


def _load():
    """Import torch and the bridge once; afterwards every helper is a global read."""
    global _torch, _aten, _to_torch, _from_torch, _bridge
    try:
        import torch
    except ImportError as exc:  # say which feature needs torch and the usual cause, not only a missing .so
        raise ImportError(
            f"megengine runs convolution, pooling and batch norm on torch's ATen kernels, but "
            f"torch cannot be imported ({exc}). Install torch for this Python, e.g. the CPU "
            f"build: pip install torch --index-url https://download.pytorch.org/whl/cpu. A PyPI "
            f"torch wheel installed with --no-deps fails this way too: it needs its nvidia-* "
            f"CUDA libraries (libcudnn, libcublas, ...)."
        ) from exc

    from ..core.torch_bridge import load_extension

    ext = load_extension()
    threads = os.environ.get("MGE_NUM_THREADS")
    if threads:  # an explicit engine setting wins over torch's default (all cores)
        torch.set_num_threads(_check_threads(threads, "MGE_NUM_THREADS"))
    _aten, _to_torch, _from_torch = torch.ops.aten, ext.to_torch, ext.from_torch
    _torch, _bridge = torch, ext
    return torch


def bridge():
    """The torch bridge's compiled module (`megengine.core.torch_bridge`) for its host kernels
    (``sgd_step``), once something has loaded it; None before (a caller with array code of its
    own does not make a program that never needed torch import it, or compile the bridge)."""
    return _bridge


def _check_threads(n, what):
    try:
        n = int(n)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"{what}: the number of threads must be a positive integer, got {n!r}")
    return n


def torch_module():
    """The torch module (imported on first use)."""
    return _torch or _load()


def aten():
    """``torch.ops.aten``: the kernels' namespace (imports torch on first use)."""
    if _aten is None:
        _load()
    return _aten


# ATen ops by torch's generated Python bindings (``torch.<name>``, ``torch._C._nn.<name>``),
# looked up once. They parse arguments in C++ and call the op unboxed; ``torch.ops.aten.<name>``
# goes through the boxed dispatcher. Measured with one thread: a depthwise convolution of
# (1, 24, 7, 7) 48 us against 56, a 1x1 one 4.7 against 8.8, inference batch norm 3.5 against
# 5.1: per call, a few microseconds that a convnet pays on every layer.
_bindings = {}


def op(name):
    """The fastest Python entry to ATen op ``name``: torch's binding where it has one, else
    ``torch.ops.aten.<name>`` (same arguments either way)."""
    f = _bindings.get(name)
    if f is None:
        torch = torch_module()
        f = getattr(torch, name, None) or getattr(torch._C._nn, name, None) or getattr(aten(),
                                                                                       name)
        _bindings[name] = f
    return f


class _Ops:
    """`op` spelled as attributes, ``ops.relu(t)``: what code written against the
    ``torch.ops.aten`` namespace calls instead, each name looked up once (a forward op's
    binding takes ~1.2 us on a small tensor, against ~2.2 us through ``torch.ops.aten``)."""

    def __getattr__(self, name):
        if name.startswith("__"):  # (copy, pickle and inspect probe for special names)
            raise AttributeError(name)
        f = op(name)
        setattr(self, name, f)  # (later reads find the attribute, without this call)
        return f


ops = _Ops()


def view(a):
    """A torch tensor over engine array ``a``'s memory (numpy or CuPy): no copy."""
    if _to_torch is None:
        _load()
    return _to_torch(a)


def memory_view(a):
    """`view` of engine array ``a`` whose tensor keeps ``a``'s memory alive rather than ``a``
    itself (CuPy: the memory object behind it), for a cache of views kept between calls: it
    is then no holder of ``a`` that a write in place into ``a`` must spare (`Tensor._shared`
    counts ``a``'s references), and it stays valid as long as ``a``'s pointer, shape, strides
    and dtype are what it was made from. numpy arrays: `view`."""
    if type(a) is np.ndarray:
        return view(a)
    if _to_torch is None:
        _load()
    from ..core.torch_bridge import _cuda_array_to_torch

    return _cuda_array_to_torch(a, a.data.mem)


def array(t):
    """An engine array over torch tensor ``t``'s storage (numpy for CPU, CuPy for CUDA): no copy."""
    if _from_torch is None:
        _load()
    return _from_torch(t)


def exclusive_views(tensors, dtypes):
    """torch views of the arrays of Tensors ``tensors`` for one of ATen's multi-tensor ops to
    write in place (clip_grad_norm, GradScaler.unscale): CUDA arrays of one device and of one
    dtype among ``dtypes``, where torch has CUDA, none of them seen by another tensor
    (`Tensor._aliased`: upstream's values never change, so an alias keeps its value, which the
    array code's writes see to). None otherwise: the caller's array code serves."""
    if not tensors:
        return None
    first = tensors[0]
    kind, dtype, device = type(first._data), first._data.dtype, first._device
    if kind is np.ndarray or dtype not in dtypes or not use_aten(first._data, "update"):
        return None
    for t in tensors:  # (no array held in a local here: `_aliased` counts their references)
        if type(t._data) is not kind or t._data.dtype != dtype or t._device != device \
                or t._aliased():
            return None
    return [view(t._data) for t in tensors]


def written(a):
    """Say that an ATen kernel has written into engine array ``a`` in place, through a `view`:
    for a CUDA array the engine's next kernels (CuPy's current stream) are ordered after torch's
    current stream (nothing to do when they are one stream, the usual case; `array` orders a
    result the same way). numpy arrays: nothing."""
    if type(a) is not np.ndarray:
        from ..core.torch_bridge import cupy_waits_for_torch

        cupy_waits_for_torch(a.device.id)


def fresh_gradient(t):
    """`array` of ``t``, a buffer that an ATen backward kernel has just allocated, declared
    the gradient's alone (`dispatch.declare_fresh_gradient`): a GradManager hands it, or a
    reshape of it, to ``.grad`` without a copy."""
    return _dispatch.declare_fresh_gradient(array(t))


class LayerViews:
    """One layer's torch views of its parameter arrays, kept from one call to the next.

    A layer (Conv2d, BatchNorm2d) owns one and hands it to the op it makes per call; the op
    looks here before making views of the weight, bias or running statistics again (~0.4 us
    each, one to four a layer on every call of an eval network at batch 1).

    Why a kept view is never stale: it is zero-copy, so whatever is written into the array in
    place shows through it; and the entry is found by its key, which holds the ``id`` of each
    array it was made from while the entry keeps those arrays alive (so no other array can take
    their ids). A Parameter whose storage is replaced by a new array, or another weight passed
    to the layer's ``calc_conv``, misses, and the op stores fresh views. The entry is
    registered as an engine cache (`dispatch.cache_holds`): a write in place into one of its
    arrays (an optimizer step, ``load_state_dict``, ``set_value``, ``+=``) first empties it
    (`release`), so that the kept arrays are not taken for a user's view that must keep the old
    value (`Tensor._shared`). Ops store only views of the
    arrays' own memory (no dtype cast, no copy) of numpy arrays: a CUDA view also orders
    streams when it is made, so it is made per call. Pickles and copies of a layer leave it
    out (`Module.__getstate__`: views of torch memory are not state).
    """

    __slots__ = ("entry", "args", "__weakref__")

    def __init__(self):
        # (key, held arrays, views), or None: one tuple, replaced by one assignment, so that
        # a thread reading it while another calls the layer never pairs a key with the
        # views of other arrays
        self.entry = None
        # (the layer's argument objects, what the op made of them): a conv layer's stride,
        # padding, dilation, groups as normalized tuples, kept while it passes the same
        # objects (ints and tuples of ints: immutable, so the same object is the same value;
        # ``conv.stride = 2`` after construction passes another object)
        self.args = None

    def fill(self, key, held, views):
        before = self.entry
        self.entry = (key, held, views)
        _dispatch.cache_holds(self, held, () if before is None else before[1])

    def release(self):
        """Let the arrays go (a write in place into one of them is coming: `Tensor._shared`)."""
        before, self.entry = self.entry, None
        if before is not None:
            _dispatch.cache_holds(self, (), before[1])

    def __del__(self):
        try:
            self.release()
        except (AttributeError, TypeError):  # (at exit, modules may be gone)
            pass

    def __reduce__(self):  # pickle, copy and deepcopy: a new empty one
        return type(self), ()


def layer_views(layer):
    """The `LayerViews` of module ``layer``, made at its first call (also for layers that
    were pickled before they had one)."""
    views = layer.__dict__.get("_layer_views")
    if views is None:
        views = layer.__dict__["_layer_views"] = LayerViews()
    return views


# On CUDA every family runs on ATen (softmax, log_softmax, cross entropy, gelu, layer norm): there
# ATen's fused, tuned kernels replace a chain of small CuPy kernels. On the CPU only those in
# _ON_CPU below do; for the others numpy is measured faster at the small batches the engine aims
# at. Tests force a family onto ATen for numpy arrays too, so that the code the
# GPU runs is checked here against torch.
_forced = set()
# Families that run on ATen on the CPU too, where a measurement says so (one thread, float32,
# forward + backward through the op): gelu's exact erf is ATen's vectorised kernel, 0.5 ms
# forward and 0.9 ms backward on 1M values against 11 ms and 1.1 ms for numpy's polynomial;
# layer norm of (16, 64, 256) 0.5 ms against 1.2 ms; softmax of (16, 8, 64, 64) over the last
# axis 0.9 ms against 2.0 ms, but only over long rows of large inputs (the op passes
# ``cpu_worth``): 320 rows of 10 took 38 us against numpy's 30, 1024 rows of 10 287 us against
# 137. Tests avoid a family (`avoided`) to check the array code that CuPy runs when torch has
# no CUDA. "rnn": the recurrent gemm of each LSTM / RNN step (`functional/rnn.py`), MKL's
# (16, 256) @ (256, 1024)^T 122 us against OpenBLAS's 196 us with one thread.
# "group_norm": (16, 64, 32, 32) in 8 groups, forward + backward 2.3 ms against 6.9 ms.
# "activation": leaky_relu, relu6, sigmoid, hsigmoid, hswish, silu (`functional/nn.py`), 4-8x
# faster than the array code forward + backward at 64K and 1M float32 values.
# "cross_entropy": (N, C) float32/float64 logits (`functional/loss.py`), log-softmax on ATen;
# forward 256 x 1000 178 us against numpy's 285, 64 x 32000 1.57 ms against 2.08 (other layouts,
# probabilities and float16 stay on the array code, or on ATen's general path when forced);
# without a gradient ATen's fused loss at any row width (`loss.py` _ATEN_MAX_NARROW); the
# training case of narrow rows (fewer than 16 classes, the mean) one call of the bridge's host
# kernel each way (`loss.py` _forward_rows_bridge).
# "pair_loss": squared error and smooth L1 of two float32/float64 arrays of one shape, ATen's
# fused loss and backward: 512K values, forward 144 us against numpy's 267 (square), 148
# against 531 (smooth L1); binary cross entropy with logits from 1024 values, its backward's
# sigmoid too (`functional/loss.py` _BinaryCrossEntropy, where the measurements are).
# "topk": F.topk of float32/float64 (not kth_only), ATen's topk instead of numpy's argpartition:
# (256, 1000), k = 5, 0.47 ms against 3.0 ms; short rows take one stable sort each instead
# (`functional/math.py` _SHORT_ROW, where the measurements are).
# "norm": the 2-norm of F.norm / F.normalize, ATen's linalg_vector_norm: (512, 1024) over axis 1
# 73 us against 180.
# "reduce": sum, mean, max and min of float32/float64 arrays over some axes from 8192 elements
# (`core/ops.py` Reduce, where the measurements are): (256, 1000) over axis 1, sum 15 us
# against numpy's 44. Numpy arrays only: CuPy's reductions stay on CUDA.
# "gather": F.gather and F.indexing_one_hot of float32/float64 arrays, ATen's gather, which
# checks the index bounds in its loop (`functional/indexing.py`): (256, 1000) at one index per
# row 3.8 us against 6.2 for numpy's bounds check and fancy indexing.
# "pow": a float32/float64 array to one exponent from 1024 values (`core/ops.py` Pow, where
# the measurements are): 512K values ** 3 0.22 ms against numpy's 31.9.
# "gemm": float32/float64 matrix products of the sizes numpy's BLAS would run on threads of
# its own (`core/ops.py` matmul, where the measurements are): one thread pool, torch's.
# "update": SGD's update of float32/float64 parameters from 65536 elements; Adam's, AdamW's,
# Adagrad's and Adadelta's from 2**19 while the pool has more than one thread
# (`optimizer/optimizer.py` update_on_aten and passes_on_aten, where the measurements are).
# "pool": sums, differences and products of two large float arrays of one shape, gradient sums,
# joins and the copies of reshapes' gradients (`binary`, where the measurements are),
# while torch's pool has more than one thread.
# "cast": float16 <-> float32 conversions from 4096 values (`half_cast`, where the measurements
# are).
# "half": float16 sums, differences and products from 1024 values (`binary`, where the
# measurements are).
# "index_add": the gradient of x[idx] of float arrays from 1024 values, ATen's index_add_
# (float16: index_put_'s accumulation; `core/ops.py` IndexAdd, where the measurements are).
# "log1p": log1p of float32/float64 arrays from 1024 values (`elemwise.log1p_array`, where the
# measurements are): 64K float32 values 124 us against numpy's 849.
# "exp_log": F.exp and F.log of float32 arrays from 65536 values, float64 from 4096
# (`elemwise.EXP_LOG_ATEN_MIN`, where the measurements are): 1M float32 values, exp 1.3 ms
# against numpy's 3.3.
_ON_CPU = frozenset({"gelu", "layer_norm", "softmax", "rnn", "group_norm", "activation",
                     "cross_entropy", "pair_loss", "topk", "norm", "reduce", "gather", "pow",
                     "gemm", "update", "pool", "cast", "half", "index_add", "log1p",
                     "exp_log"})
_avoided = set()
_torch_cuda = None  # whether torch can run CUDA kernels: asked once, at the first CUDA array
_torch_cpu = None  # whether torch and the bridge load: asked once, at the first CPU array


def use_aten(a, family, cpu_worth=True):
    """Whether op family ``family`` takes its ATen path for engine array ``a``: for CUDA (CuPy)
    arrays whenever torch has CUDA (a CPU-only torch leaves them on CuPy's array code), for
    numpy arrays inside ``forced(family)`` and for the families measured faster on ATen on the
    CPU too, where the op says this call is ``cpu_worth`` it (unless ``avoided``, or torch
    cannot be imported: the array code still serves)."""
    if type(a) is np.ndarray:
        if family in _forced:
            return True
        if not cpu_worth or family not in _ON_CPU or family in _avoided:
            return False
        return _ask_torch_cpu() if _torch_cpu is None else _torch_cpu
    if family in _avoided:
        return False
    if _torch_cuda is None:
        return _ask_torch_cuda()
    return _torch_cuda


def _ask_torch_cpu():
    """Load torch and the bridge for the CPU families. They have array code of their own, so a
    missing torch or a bridge that cannot be built leaves them there (with one warning for the
    latter) instead of failing where they used to work; convolution still reports the error."""
    global _torch_cpu
    try:
        _load()
        _torch_cpu = True
    except ImportError:
        _torch_cpu = False
    except Exception as exc:  # noqa: BLE001  (a failed build: compiler, ninja, disk)
        import logging

        logging.getLogger(__name__).warning(
            "megengine: ATen's CPU kernels are unavailable (%s); gelu, layer_norm, softmax, "
            "group_norm and the recurrent layers use the slower array code", exc)
        _torch_cpu = False
    return _torch_cpu


def _ask_torch_cuda():
    global _torch_cuda
    try:  # torch alone (the bridge is loaded, and built if need be, by the first kernel)
        import torch

        _torch_cuda = bool(torch.cuda.is_available())
    except ImportError:  # no torch at all: CuPy's array code still serves
        _torch_cuda = False
    return _torch_cuda


def forced(*families):
    """Run the named op families on their ATen path for numpy arrays too (tests, benchmarks)."""
    return _added(_forced, families)


def is_forced(family):
    """Whether a test or benchmark forced ``family`` onto ATen for numpy arrays (an op whose CPU
    path differs from its CUDA one then takes the CUDA one)."""
    return family in _forced


def avoided(*families):
    """Keep the named op families on their array code on both devices (tests: the code CuPy runs
    when torch has no CUDA; benchmarks: the array code against ATen)."""
    return _added(_avoided, families)


@contextlib.contextmanager
def _added(families_set, families):
    """``families`` in ``families_set`` for the block (those already in it stay after)."""
    added = [f for f in families if f not in families_set]
    families_set.update(added)
    try:
        yield
    finally:
        families_set.difference_update(added)


# Element-wise passes over large arrays on torch's thread pool ("pool"): numpy runs them on one
# thread, so with several threads ATen's take less time. Measured with two threads (float32,
# output allocated by numpy either way; `a + b` against `torch.add(..., out=)`): 262144 values
# 43 us against 35, 1M 267 against 119; joining two (8, 2048, 8, 8) arrays 498 us against 177.
# At 65536 values ATen's call costs more than it saves (11 us against 15), and with one thread
# it never pays: hence `dispatch.POOL_MIN`, the callers' first test. The output is numpy's
# (`np.empty`): torch's CPU allocator does not ask for transparent huge pages, and a large
# buffer of its own page-faults in (8M float32 values took 23 ms here, numpy's 6). The values
# are the same: IEEE sums, differences and products, and copies, whichever pool runs them.


def _pool_worth(a):
    return a.dtype in _dispatch.KERNEL_FLOATS and use_aten(a, "pool") and get_num_threads() > 1


# float16 sums, differences and products ("half"): numpy's float16 loops convert each element
# to float32 and back one at a time (not vectorised here), ATen's vectorised ones (F16C) compute
# the same values: both compute in float32 and round once, and float32's 24 bits hold the 2 * 11
# + 2 that make that rounding IEEE's correctly rounded float16 result (only NaN payloads may
# differ). Measured with one thread (a + b, products alike, a row broadcast alike): 1024 values
# 5.8 us against 1.4 (3-4 with this call's views: hence `HALF_MIN`); 65536 400 against 10; 1M
# 7.3 ms against 0.17. Under megengine.amp.autocast on the CPU the float16 ops' gradients are
# such arrays.
HALF_MIN = 1024


def binary(name, a, b):
    """``a + b``, ``a - b`` or ``a * b`` (``name``: "add", "sub", "mul") of two numpy arrays of
    one dtype computed by ATen where that pays, else None: float16 arrays (broadcast, any
    strides) from `HALF_MIN` values on ATen's vectorised loops (`half`, below), float32 and
    float64 arrays of one shape, C-contiguous, on torch's pool while it has several threads
    (above). Callers test ``a.size >= dispatch.POOL_MIN`` or a float16 dtype first (else no
    call: nothing to gain)."""
    if type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype is not b.dtype:
        return None
    if a.dtype is _dispatch.FLOAT16:
        if a.size < HALF_MIN and b.size < HALF_MIN or not use_aten(a, "half"):
            return None
        shape = a.shape
        if b.shape != shape:
            try:
                shape = np.broadcast_shapes(shape, b.shape)  # (1.7 us: equal shapes skip it)
            except ValueError:  # (the caller's array code says so)
                return None
    elif a.shape == b.shape and a.flags.c_contiguous and b.flags.c_contiguous \
            and _pool_worth(a):
        shape = a.shape
    else:
        return None
    out = np.empty(shape, a.dtype)
    op(name)(_to_torch(a), _to_torch(b), out=_to_torch(out))
    return out


def pooled_concat(arrays, axis):
    """numpy arrays of one dtype joined along ``axis`` (as ``np.concatenate``) on torch's pool
    when that pays (above), else None. Callers check the sizes first (see `binary`)."""
    first = arrays[0]
    dtype, ndim = first.dtype, first.ndim
    if ndim == 0:
        return None
    axis %= ndim
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype is not dtype or a.ndim != ndim:
            return None
    if not _pool_worth(first):
        return None
    shape = list(first.shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    for a in arrays:  # (numpy's message for shapes that differ elsewhere: the caller's)
        if a.shape[:axis] != first.shape[:axis] or a.shape[axis + 1:] != first.shape[axis + 1:]:
            return None
    out = np.empty(shape, dtype)
    op("cat")([_to_torch(a) for a in arrays], axis, out=_to_torch(out))
    return out


def pooled_reshape(a, shape):
    """``a.reshape(shape)`` of a numpy array that is not C-contiguous: a view where numpy makes
    one, else the copy numpy would make, on torch's pool, when that pays (above); None when it
    does not (or numpy 2.0 cannot tell a view from a copy: its reshape has no ``copy``
    argument)."""
    if type(a) is not np.ndarray or not _pool_worth(a):
        return None
    try:
        return a.reshape(shape, copy=False)  # a view: nothing to copy
    except ValueError:  # a copy is needed
        pass
    except TypeError:
        return None
    return _copied(a, a.dtype).reshape(shape)


def _copied(a, dtype):
    """A new C-contiguous numpy array of ``a``'s values in ``dtype``, written by ATen's copy."""
    out = np.empty(a.shape, dtype)
    _to_torch(out).copy_(_to_torch(a))
    return out


# float16 <-> float32 conversions, numpy's and ATen's: the same values (IEEE's round to nearest
# even; only NaN payloads may differ, a signalling NaN coming back quiet), but numpy's loop is
# not vectorised here and ATen's is (F16C). Measured with one thread, to float16 and to float32:
# 4096 values 10.4 and 6.1 us against 2.1 and 2.1; 1M values 2.7 and 1.8 ms against 0.075 and
# 0.071; 256 values 1.1 and 1.0 us against 1.8 and 1.9 (hence `core.ops.CAST_MIN`). Under
# megengine.amp.autocast on the CPU every float16 op casts its operands both ways.
_HALF_CASTS = {(np.dtype(np.float16), np.dtype(np.float32)),
               (np.dtype(np.float32), np.dtype(np.float16))}


def half_cast(a, dtype):
    """``a.astype(dtype)`` of a numpy array from float16 to float32 or back, on ATen's
    conversion (above), else None (other dtypes, CuPy arrays, and strided views that are
    neither a contiguous block nor a broadcast: the caller's ``astype``). Callers check
    ``a.size >= core.ops.CAST_MIN`` first (`core.ops.cast`). A transposed block (a matrix
    product's backward operand) converts in memory order and keeps its layout, as numpy's
    ``astype`` does: element by element in the transposed order, ATen's conversion took longer
    than numpy's (1024 x 1024: 4.0 ms against 3.0)."""
    dtype = np.dtype(dtype)
    if type(a) is not np.ndarray or (a.dtype, dtype) not in _HALF_CASTS \
            or not use_aten(a, "cast"):
        return None
    order = None
    if not a.flags.c_contiguous:
        if 0 in a.strides:  # a broadcast (a sum's gradient): ATen's copy expands it (262144
            return _copied(a, dtype)  # values: 0.03-0.4 ms against numpy's 1.2-3)
        order = np.argsort(a.strides)[::-1]  # the axes in memory order
        a = a.transpose(order)
        if not a.flags.c_contiguous:
            return None
    out = _copied(a, dtype)
    return out if order is None else out.transpose(np.argsort(order))


def set_num_threads(n):
    """Set the number of CPU threads the engine's ATen kernels use (torch's intra-op pool)."""
    torch_module().set_num_threads(_check_threads(n, "set_num_threads"))


def get_num_threads():
    """The number of CPU threads the engine's ATen kernels use."""
    return torch_module().get_num_threads()
