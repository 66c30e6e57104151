"""Normalization (F.nn.batch_norm with ATen's backward kernel; layer_norm, group_norm, instance_norm, general_norm, local_response_norm): forward and backward per op."""
import math

import numpy as np

from ..core._caller import public_function
from ..core._trace_option import as_int, is_dim, is_int
from ..core import amp as _amp
from ..core.dispatch import FLOAT16, KERNEL_FLOATS, Op, apply
from ..core.dtype import float_value, quantize_array
from ..core.ops import (ArgumentError, ArgumentTypeError, ShapeError, acc_dtype,
                        half_operands, int_tuple, unbroadcast, xp_of)
from ..core import dispatch
from ..core.tensor import Tensor, _note_write
from . import _aten
from ._args import _as_float, _int, _real, _tensor

__all__ = ["batch_norm", "general_norm", "group_norm", "instance_norm", "layer_norm",
           "local_response_norm", "sync_batch_norm"]


# ----- normalization -----

# Training forward on the CPU: numpy's passes win over ATen's NCHW kernel on feature maps, ATen
# wins when each sample has few values per channel (its kernel then runs channels-last,
# vectorised along C). Measured forward, one thread: (256, 512) as BatchNorm1d sees it 60 us
# against 130; (1024, 64) 34 against 96; (32, 64, 16, 1) 67 against 79; (32, 128, 4, 4) even;
# (64, 64, 8, 8) 490 against 270. So numpy above this many values per sample and channel, and
# only while torch's pool (the engine's, `functional._aten`) has one thread: numpy's passes run
# on the calling thread, ATen's kernel on the pool. Measured with two threads, training forward:
# (8, 64, 56, 56) 2.2 ms on ATen against 3.1 for numpy, (8, 232, 14, 14) 0.49 against 0.58,
# (8, 58, 28, 28) 0.47 against 0.47, (8, 24, 112, 112) 3.5 against 2.3 (one thread: 4.2
# against 2.4, 0.81 against 0.50, 0.82 against 0.49, 6.2 against 2.2); with more threads
# ATen's share of each pass shrinks and numpy's does not.
_NUMPY_BN_MIN_SPATIAL = 16


def _vec(a, c, dtype):
    """A torch (C,) view of per-channel array ``a`` in the compute dtype."""
    if a.dtype == dtype and a.flags.c_contiguous:  # the common case: a view
        return _aten.view(a.reshape(c))
    if a.dtype.metadata is not None:  # a quantized parameter: its values
        a = float_value(a)
    # contiguous: ATen's CPU batch-norm kernels read a strided (C,) weight or running stat as
    # if it were contiguous (a parameter sliced w[:, ::2] got wrong gradients)
    return _aten.view(xp_of(a).ascontiguousarray(a.reshape(c), dtype=dtype))


def _stat_copy(a, c, dtype):
    """A torch (C,) copy of running statistic ``a`` in the compute dtype, for ATen to update
    in place (a quantized one: its values)."""
    if a.dtype.metadata is not None:
        a = float_value(a)
    return _aten.view(a.reshape(c).astype(dtype, copy=True))


def _stat_update(t, like):
    """Updated running statistic ``t`` (a torch (C,) tensor) as an array of ``like``'s shape
    and dtype (a quantized one: the values quantized, not cast to stored integers)."""
    a = _aten.array(t).reshape(like.shape)
    if like.dtype.metadata is not None:
        return quantize_array(a, like.dtype)
    return a.astype(like.dtype, copy=False)


class _BatchNorm(Op):
    """Batch norm of an (N, C, ...) input per channel: the training forward of feature maps in
    numpy on the CPU with one thread (measured faster, see `_forward_cpu` and
    `_NUMPY_BN_MIN_SPATIAL`), ATen's
    ``native_batch_norm`` elsewhere, inference on the CPU included (one fused pass: 0.26 ms
    against numpy's 0.53 for (8, 144, 56, 56), 13 us against 37 for ShuffleNetV2's small maps
    at batch 1); backward always ATen's.

    Inputs: x, then weight and bias if given, then running mean and var if given. Training
    normalizes with the batch statistics and, with running stats, also returns their updates
    ``momentum * running + (1 - momentum) * batch`` (unbiased batch variance) as two more
    outputs (C elements each: copies of the running stats updated in place, as ATen does with
    torch's momentum ``1 - momentum``; the caller writes them into the buffers' storage). With
    ``stats_in_place`` (set by `_batch_norm` when nothing else sees the buffers' arrays, see
    `_stats_in_place`) ATen updates the running stats' own arrays instead and only the output
    is returned: no copies, as torch updates its buffers. Inference normalizes with the running
    stats, which are constants. Backward is ``native_batch_norm_backward`` on the saved views
    (the input, the weight, the saved mean and inverse std), as torch keeps them.
    """
    format_rule = "keep"  # how a tensor format label passes (megengine.core.format)
    # an eval BatchNorm layer's `_aten.LayerViews`, set by `_batch_norm` (F.batch_norm: None)
    cache = None
    what = "batch_norm"  # (the public function, for errors)
    stats_in_place = False  # training: update the running stats' own arrays (`_batch_norm`)
    stats_written = False  # whether forward did (then it returned the output alone)

    def __init__(self, eps, momentum, training, has_weight, has_bias, has_stats):
        # (ATen's own refusal of a string eps names neither batch_norm nor eps)
        eps = eps if type(eps) is float else _real(eps, "eps", "batch_norm")
        self.eps, self.momentum, self.training = eps, momentum, training
        self.has_weight, self.has_bias, self.has_stats = has_weight, has_bias, has_stats

    def forward(self, x, *params):
        views = self.cache
        e = None if views is None else views.entry
        if e is not None and len(params) == 4 and e[0] == (
                id(params[0]), id(params[1]), id(params[2]), id(params[3]), x.dtype,
                x.shape[1]) and x.flags.c_contiguous and not any(self.needs_input_grad):
            # an eval layer's call with its own parameter arrays (`_aten.LayerViews`; the key
            # says a float dtype, and training layers pass no views): its kept views
            # (the bridge's functions without `view`'s and `array`'s frames: it made e[2];
            # the kernel's binding from `_aten.op`'s table without its frame)
            kernel = _aten._bindings.get("native_batch_norm") or _aten.op("native_batch_norm")
            y = kernel(_aten._to_torch(x), *e[2], False, 1.0 - self.momentum, self.eps)[0]
            return _aten._from_torch(y)
        c = x.shape[1]
        # contiguous (a copy only for a strided view): ATen's CPU batch-norm backward gives wrong
        # input gradients for some strided inputs, e.g. a (2, 3, 3, 1) view with strides
        # (9, 1, 3, 3) next to a contiguous output gradient
        if x.dtype.kind != "f" or not x.flags.c_contiguous:
            x = xp_of(x).ascontiguousarray(_as_float(x, self))
        dtype = x.dtype
        if not self.training and len(params) == 4 and not any(self.needs_input_grad):
            # inference of an affine layer with running stats, no gradient: the one kernel
            # call with nothing kept (the path every eval BatchNorm layer takes)
            w, b, rm, rv = params
            vecs = (_vec(w, c, dtype), _vec(b, c, dtype), _vec(rm, c, dtype),
                    _vec(rv, c, dtype))
            if views is not None and type(x) is np.ndarray and all(
                    p.dtype == dtype and p.flags.c_contiguous for p in params):
                # kept for the layer's next calls (views of the arrays' own memory: `_vec`
                # made no cast and no copy)
                views.fill((id(w), id(b), id(rm), id(rv), dtype, c), params, vecs)
            y = _aten.op("native_batch_norm")(_aten.view(x), *vecs, False, 1.0 - self.momentum,
                                              self.eps)[0]
            return y if type(y) is np.ndarray else _aten.array(y)

        def vec(a):  # a (C,) view of a parameter in the compute dtype
            return _vec(a, c, dtype)

        tx = _aten.view(x)
        tw = vec(params[0]) if self.has_weight else None
        tb = vec(params[int(self.has_weight)]) if self.has_bias else None
        m = x.size // max(c, 1)
        rm = rv = None
        in_place = False
        if self.has_stats:
            rm_a, rv_a = params[-2:]
            # ATen updates the running stats it is given in place: the buffers' own arrays when
            # `_batch_norm` found no one else sees them and they are what the kernel takes
            # (the compute dtype, contiguous: `_vec` makes views of them, no copies), else
            # copies, written back by the caller
            in_place = self.stats_written = self.training and self.stats_in_place and all(
                a.dtype == dtype and a.dtype.metadata is None and a.flags.c_contiguous
                for a in (rm_a, rv_a))
            if in_place or not self.training:
                rm, rv = vec(rm_a), vec(rv_a)
            else:
                rm, rv = _stat_copy(rm_a, c, dtype), _stat_copy(rv_a, c, dtype)
        # one value per channel: the unbiased variance is undefined (torch's update gives nan);
        # upstream trains on, so the running variance takes the biased one (0) instead
        single = self.training and rm is not None and m < 2
        if self.training and type(x) is np.ndarray and m > _NUMPY_BN_MIN_SPATIAL * x.shape[0] \
                and _aten.get_num_threads() == 1:
            y, save_mean, save_invstd = self._forward_cpu(x, tw, tb, rm, rv, m)
        else:
            y, save_mean, save_invstd = _aten.op("native_batch_norm")(
                tx, tw, tb, None if single else rm, None if single else rv, self.training,
                1.0 - self.momentum, self.eps)
            if single:
                rm.mul_(self.momentum).add_(save_mean, alpha=1.0 - self.momentum)
                rv.mul_(self.momentum)
        if any(self.needs_input_grad):  # what backward (and grad_graph) read
            # (training: ATen's backward reads the saved batch statistics, not the running
            # ones, so they are not kept: a kept view of a buffer would be a holder of its
            # array, and the next step's update would have to copy it)
            self.saved = (tx, tw, None if self.training else rm, None if self.training else rv,
                          save_mean, save_invstd)
            self.param_shapes = [p.shape for p in params]
            self.param_dtypes = [p.dtype for p in params]
        if type(y) is not np.ndarray:
            y = _aten.array(y)
        if not (self.training and self.has_stats) or in_place:
            return y
        rm_a, rv_a = params[-2:]
        return y, _stat_update(rm, rm_a), _stat_update(rv, rv_a)

    def _forward_cpu(self, x, tw, tb, rm, rv, m):
        """The forward on the CPU in numpy; returns what ``aten.native_batch_norm`` returns
        (output, batch mean, inverse std) and updates ``rm``/``rv`` the same way, so that its
        backward kernel takes over from here.

        Measured with one thread, ATen's NCHW forward is 2.5-3.5x slower than these three
        passes (training, (64, 8, 28, 28): 0.72 ms vs 0.26; (8, 64, 56, 56): 2.9 vs 1.1;
        (8, 512, 7, 7): 0.39 vs 0.18); its backward kernel is as fast as numpy, so it stays.
        """
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        w = None if tw is None else _aten.array(tw)
        b = None if tb is None else _aten.array(tb)
        if self.training:
            mean = np.einsum("ncs->c", x3) / x.dtype.type(m)
            y = x3 - mean[:, None]
            var = np.einsum("ncs,ncs->c", y, y) / x.dtype.type(m)
        else:
            mean, var = _aten.array(rm), _aten.array(rv)
            y = x3 - mean[:, None]
        invstd = 1 / np.sqrt(var + x.dtype.type(self.eps))
        y *= (invstd if w is None else invstd * w)[:, None]
        if b is not None:
            y += b[:, None]
        if self.training and rm is not None:  # in place, as ATen updates them
            mom = x.dtype.type(self.momentum)
            rm_a, rv_a = _aten.array(rm), _aten.array(rv)
            rm_a *= mom
            rm_a += (1 - mom) * mean
            rv_a *= mom
            if m > 1:
                rv_a += (1 - mom) * var * x.dtype.type(m / (m - 1))
        if not self.training:  # ATen returns empty saves in inference: backward reads rm/rv
            return y.reshape(x.shape), None, None
        return y.reshape(x.shape), _aten.view(mean), _aten.view(invstd)

    # the running-stat outputs take no gradient: no zeros are made for theirs (two kernels a
    # layer on a GPU), and g is None when only they were used
    none_for_unused_grads = True

    def backward(self, g, *stat_grads):  # the running-stat outputs have no gradient
        needs = self.needs_input_grad
        if g is None:
            return (None,) * len(needs)
        tx, tw, rm, rv, save_mean, save_invstd = self.saved
        i_w, i_b = 1, 1 + self.has_weight
        mask = [needs[0], self.has_weight and needs[i_w], self.has_bias and needs[i_b]]
        gx, gw, gb = _aten.aten().native_batch_norm_backward(
            _aten.view(xp_of(g).ascontiguousarray(g)), tx, tw, rm, rv, save_mean, save_invstd,
            self.training, self.eps, mask)
        # ATen's fresh buffers, declared so: the GradManager takes them without a copy
        grads = [_aten.fresh_gradient(gx) if mask[0] else None]
        for has, i, got in ((self.has_weight, i_w, gw), (self.has_bias, i_b, gb)):
            if has:
                k = i - 1
                grads.append(_aten.fresh_gradient(got).reshape(
                    self.param_shapes[k]).astype(
                    self.param_dtypes[k], copy=False) if mask[i] else None)
        if self.has_stats:
            grads += [None, None]
        return tuple(grads)

    def grad_graph(self, inputs, outputs, grads):
        """The gradient written with Tensor arithmetic, so that it is recorded and can be
        differentiated again (MAML's meta-gradient through an inner step, gradient penalties).

        ATen's backward kernel is not differentiable, so the formulas are spelled out. In
        training, with ``xhat = (x - mean) * invstd`` over the batch statistics:
        ``gx = invstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))``, ``gxhat = g * w``;
        in inference the running statistics are constants and ``gx = gxhat * invstd``.
        """
        x, g = inputs[0], grads[0]
        needs = self.needs_input_grad
        if g is None:  # only the running statistics were used: they take no gradient
            return (None,) * len(needs)
        bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        axes = (0,) + tuple(range(2, x.ndim))
        if self.training:
            xc = x - x.mean(axis=axes, keepdims=True)
            invstd = ((xc * xc).mean(axis=axes, keepdims=True) + self.eps) ** -0.5
        else:
            xc = x - inputs[-2].reshape(bshape)
            invstd = (inputs[-1].reshape(bshape) + self.eps) ** -0.5
        xhat = xc * invstd
        w = inputs[1].reshape(bshape) if self.has_weight else None
        gx = None
        if needs[0]:
            gxhat = g if w is None else g * w
            if self.training:
                gx = (gxhat - gxhat.mean(axis=axes, keepdims=True)
                      - xhat * (gxhat * xhat).mean(axis=axes, keepdims=True)) * invstd
            else:
                gx = gxhat * invstd
        out = [gx]
        i_w, i_b = 1, 1 + self.has_weight
        if self.has_weight:
            out.append((g * xhat).sum(axis=axes).reshape(self.param_shapes[0])
                       if needs[i_w] else None)
        if self.has_bias:
            out.append(g.sum(axis=axes).reshape(self.param_shapes[i_b - 1])
                       if needs[i_b] else None)
        if self.has_stats:
            out += [None, None]
        return tuple(out)


def _fresh(t, shape):
    """ATen's fresh gradient ``t`` (`_aten.fresh_gradient`) in ``shape``."""
    return _aten.fresh_gradient(t).reshape(shape)


class _Normalize(Op):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with statistics over the last axis of
    the ``view`` of x (layer norm: (rows, M); group norm: (N, groups, -1)).

    ``affine_view``/``affine_shape`` say how weight and bias broadcast against x. Inputs: x,
    then weight and bias if present.
    """
    autocast = "high"  # megengine.amp.autocast: float32, as upstream's LayerNorm and GroupNorm

    tx = None  # ATen's view of x as (rows, M), when the ATen path ran
    # numpy's float16 loops convert one element at a time: float16 x computes on ATen's float32
    # kernels (`computes_half`), each result rounded once, as torch's CPU kernels compute
    # float16 (numpy's passes left x's gradient up to 136 float16 steps off). One thread,
    # forward and backward: layer norm of (512, 512) over rows 3.9-5.7 ms before, 0.51 after
    # (float32 0.47-0.63); group norm of (16, 32, 32, 32) in 4 groups 4.8 before, 1.8 after
    # (float32 0.6-0.7)
    half_in_float32 = True

    def __init__(self, view, affine_view, affine_shape, eps, has_weight, has_bias, family=None,
                 what="layer_norm"):
        eps = eps if type(eps) is float else _real(eps, "eps", what)  # (as _BatchNorm's)
        self.view, self.eps, self.what = view, eps, what  # (what: the public function, for errors)
        self.affine_view, self.affine_shape = affine_view, affine_shape
        self.has_weight, self.has_bias = has_weight, has_bias
        # "layer_norm": ATen's layer norm kernels may serve (`_aten.use_aten`; view (-1, M));
        # "group_norm": its group norm kernels (view (N, groups, -1))
        self.family = family

    def computes_half(self, arrays):
        """float16 x on ATen's kernels (`half_in_float32`), its parameters float16 or float32
        (float32 ones keep their dtype and their gradients'): on the CPU from
        `_aten.HALF_MIN` values, on CUDA always (CuPy's float16 array code launched ~27
        kernels for a layer norm's forward and backward, ATen's path seven)."""
        x, params = arrays[0], arrays[1:]
        return (self.family is not None and x.dtype is FLOAT16
                and (type(x) is not np.ndarray or half_operands(x))
                and all(p.dtype is FLOAT16 or p.dtype == np.float32 for p in params)
                and _aten.use_aten(x, self.family))

    def forward(self, x, *params):
        x = _as_float(x, self)
        if (self.family is not None and x.size and x.dtype in KERNEL_FLOATS
                and _same_dtype(params, x.dtype) and _aten.use_aten(x, self.family)):
            return self._forward_on_aten(x, params)
        self.tx = None
        params = [p if p.dtype.kind == "f" else _as_float(p, self) for p in params]  # (values)
        xp = xp_of(x)
        self.x_shape, out_dtype = x.shape, x.dtype
        acc = acc_dtype(x.dtype)  # float16: the statistics and the output in float32 (above)
        x = x.reshape(self.view) if acc is None else x.reshape(self.view).astype(acc)
        xhat = x - x.mean(-1, keepdims=True)
        var = xp.einsum("...i,...i->...", xhat, xhat)[..., None] / x.shape[-1]
        self.inv = 1 / xp.sqrt(var + x.dtype.type(self.eps))
        xhat *= self.inv
        self.xhat = y = xhat.reshape(self.affine_view)
        self.param_shapes = [p.shape for p in params]
        self.w = params[0].reshape(self.affine_shape) if self.has_weight else None
        if self.w is not None:
            y = y * self.w
        if self.has_bias:
            y = y + params[-1].reshape(self.affine_shape)
        if acc is not None:
            return y.astype(out_dtype).reshape(self.x_shape)
        return (y if y is not self.xhat else y.copy()).reshape(self.x_shape)

    def _forward_on_aten(self, x, params):
        if self.family == "group_norm":
            return self._forward_aten_group(x, params)
        return self._forward_aten(x, params)

    def _forward_aten(self, x, params):
        """Layer norm by ATen's kernels: measured 2.4x faster than the array code on the CPU
        for (16, 64, 256) float32 forward + backward (`_aten`), one kernel each way on CUDA."""
        self.x_shape, self.x_dtype = x.shape, x.dtype
        x2 = x.reshape(self.view)  # (rows, M): a copy only for a non-contiguous x
        self.m = m = x2.shape[1]
        self.param_shapes = [p.shape for p in params]
        self.tw = _aten.view(params[0].reshape(m)) if self.has_weight else None
        self.tb = _aten.view(params[-1].reshape(m)) if self.has_bias else None
        self.tx = _aten.view(x2)
        y, self.mean, self.rstd = _aten.ops.native_layer_norm(self.tx, [m], self.tw, self.tb,
                                                              self.eps)
        return _aten.array(y).reshape(self.x_shape)

    def _forward_aten_group(self, x, params):
        """Group norm (and instance norm) by ATen's kernels (``native_group_norm``): measured
        against the array code on the CPU for (16, 64, 32, 32) float32 in 8 groups, forward +
        backward 2.3 ms against 6.9 ms (one thread)."""
        self.x_shape, self.x_dtype = x.shape, x.dtype
        n, c = x.shape[:2]
        self.m = hw = x.size // (n * c)  # the spatial size, ATen's HxW
        self.param_shapes = [p.shape for p in params]
        # (ATen's kernel reads weight and bias as contiguous: a strided one is copied.) The
        # weight, which backward reads, is kept as a copy of c values, as torch's instance_norm
        # keeps it (repeated): a write into a PyTorchModule's weight after this forward and
        # before backward changes no gradient (see dispatch's `_refuse_stale_pinned`)
        xp = xp_of(x)
        self.tw = _aten.view(xp.array(params[0].reshape(c))) if self.has_weight else None
        self.tb = _aten.view(xp.ascontiguousarray(params[-1].reshape(c))) \
            if self.has_bias else None
        if self.tb is not None and self.tw is None:
            # ATen's backward fails ("tensor does not have a device") asked for the bias's
            # gradient without a weight: a weight of ones changes no value
            self.tw = _aten.view(xp_of(x).ones(c, x.dtype))
        # ATen's kernel reads its input as contiguous (N, C, HxW): a copy only when x is not
        self.tx = _aten.view(xp_of(x).ascontiguousarray(x).reshape(n, c, hw))
        y, self.mean, self.rstd = _aten.ops.native_group_norm(
            self.tx, self.tw, self.tb, n, c, hw, self.view[1], self.eps)
        return _aten.array(y).reshape(self.x_shape)

    def _backward_aten(self, g):
        if self.family == "group_norm":
            return self._backward_aten_group(g)
        mask = self._aten_grad_mask()
        tg = _aten.view(g.astype(self.x_dtype, copy=False).reshape(-1, self.m))
        return self._aten_grads(mask, _aten.aten().native_layer_norm_backward(
            tg, self.tx, [self.m], self.mean, self.rstd, self.tw, self.tb, mask))

    def _backward_aten_group(self, g):
        n, c = self.x_shape[:2]
        mask = self._aten_grad_mask()
        xp = xp_of(g)
        tg = _aten.view(xp.ascontiguousarray(g, dtype=self.x_dtype).reshape(n, c, self.m))
        return self._aten_grads(mask, _aten.aten().native_group_norm_backward(
            tg, self.tx, self.mean, self.rstd, self.tw, n, c, self.m, self.view[1], mask))

    def _aten_grad_mask(self):
        """ATen's output mask: which of (x, weight, bias) get a gradient."""
        needs = self.needs_input_grad
        return [needs[0], self.has_weight and needs[1], self.has_bias and needs[-1]]

    def _aten_grads(self, mask, grads):
        """This op's gradients from ATen's (x, weight, bias) ones (None where ``mask`` is
        False), one per input."""
        gx, gw, gb = grads
        out = [_fresh(gx, self.x_shape) if mask[0] else None]
        if self.has_weight:
            out.append(_fresh(gw, self.param_shapes[0]) if mask[1] else None)
        if self.has_bias:
            out.append(_fresh(gb, self.param_shapes[-1]) if mask[2] else None)
        return tuple(out)

    def backward_reads(self):
        if self.tx is None:  # the array code's
            return self.xhat, self.inv, self.w
        if self.family == "group_norm":  # (not the bias: ATen's backward takes none)
            return self.tx, self.tw, self.mean, self.rstd
        return self.tx, self.tw, self.tb, self.mean, self.rstd

    def backward(self, g):
        if self.tx is not None:
            return self._backward_aten(g)
        needs = self.needs_input_grad
        g = g.reshape(self.affine_view)
        xhat = self.xhat
        grads = []
        if self.has_weight:
            grads.append(unbroadcast(g * xhat, self.affine_shape).reshape(self.param_shapes[0])
                         if needs[1] else None)
        if self.has_bias:
            grads.append(unbroadcast(g, self.affine_shape).reshape(self.param_shapes[-1])
                         if needs[-1] else None)
        gx = None
        if needs[0]:
            gxhat = (g if self.w is None else g * self.w).reshape(self.view)
            xh = xhat.reshape(self.view)
            gx = xh * -(gxhat * xh).mean(-1, keepdims=True)
            gx += gxhat
            gx -= gxhat.mean(-1, keepdims=True)
            gx *= self.inv
            gx = gx.reshape(self.x_shape)
        return (gx, *grads)

    def grad_graph(self, inputs, outputs, grads):
        """`backward`'s formulas with Tensor arithmetic, recorded so that they can be
        differentiated again (a WGAN-GP critic with layer norm, meta-gradients)."""
        needs = self.needs_input_grad
        xv = inputs[0].reshape(self.view)
        xc = xv - xv.mean(axis=-1, keepdims=True)
        inv = ((xc * xc).mean(axis=-1, keepdims=True) + self.eps) ** -0.5
        xhat = (xc * inv).reshape(self.affine_view)
        g = grads[0].reshape(self.affine_view)
        # the axes along which weight and bias broadcast: their gradients sum over them
        axes = tuple(i for i, s in enumerate(self.affine_shape) if s == 1)
        w = inputs[1].reshape(self.affine_shape) if self.has_weight else None
        out = [None]
        if needs[0]:
            gxhat = (g if w is None else g * w).reshape(self.view)
            xh = xhat.reshape(self.view)
            out[0] = ((gxhat - gxhat.mean(axis=-1, keepdims=True)
                       - xh * (gxhat * xh).mean(axis=-1, keepdims=True)) * inv
                      ).reshape(self.x_shape)
        if self.has_weight:
            out.append((g * xhat).sum(axis=axes).reshape(self.param_shapes[0])
                       if needs[1] else None)
        if self.has_bias:
            out.append(g.sum(axis=axes).reshape(self.param_shapes[-1]) if needs[-1] else None)
        return tuple(out)


def _same_dtype(arrays, dtype):
    for a in arrays:  # (a loop: `all` of a generator costs ~0.5 us more for two)
        if a.dtype != dtype:
            return False
    return True


def _normalize(op, inp, weight, bias):
    return apply(op, inp, *[_tensor(t) for t in (weight, bias) if t is not None])


def _check_param(t, channels, what, name):
    """Refuse a per-channel tensor ``t`` (argument ``name``) of other than ``channels`` values,
    naming the public function called (`F.nn.sync_batch_norm` runs `batch_norm`), else
    ``what``: the errors of the batch norm helpers below name it the same way."""
    if t is not None and _tensor(t).size != channels:
        raise ShapeError(f"{public_function() or what}: {name} of shape {_tensor(t).shape} does "
                         f"not match {channels} channels")


def _check_bn_args(what, inp, running_mean, running_var, weight, bias):
    """The channel count C of a batch norm's (N, C, ...) input, after checking that each
    per-channel tensor given has C values."""
    if inp.ndim < 2:
        raise ShapeError(f"{public_function() or what}: expected an input (N, C, ...) of 2 or "
                         f"more dims, got shape {inp.shape}")
    c = inp.shape[1]
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var"),
                    (weight, "weight"), (bias, "bias")):
        # (a Tensor's array size directly: this runs for every batch norm call)
        if t is not None and (t._data.size if isinstance(t, Tensor) else _tensor(t).size) != c:
            _check_param(t, c, what, name)  # raises, saying which tensor and its shape
    return c


def _check_batch_stats(what, inp, hint, group_count=None):
    """Refuse batch statistics of one value per channel (an (N, C, ...) input of N * ... == 1),
    as torch: its variance is 0/0 (upstream 1.13 gives zeros out and a NaN running_var).
    ``hint`` says what to do instead. ``group_count``: the values per channel over the ranks
    of a synced batch norm's group, which count instead of the input's own."""
    if group_count is None:
        # (the array's sizes: a check that decides no op, made twice per training batch norm
        # layer, where a traced call's ``inp.shape`` is a `Shape` read item by item in Python)
        d = inp._data
        if d.ndim >= 2 and d.size == d.shape[1] != 0:
            raise ValueError(f"{public_function() or what}: expected more than 1 value per "
                             f"channel when training, got input shape {inp.shape}; train on a "
                             f"batch of 2 or more, or {hint}")
    elif group_count == 1:
        raise ValueError(f"{what}: expected more than 1 value per channel over the ranks of the "
                         f"group when training, got 1 (input shape {inp.shape} on this rank); "
                         f"give the ranks a batch of 2 or more in all, or {hint}")


def batch_norm(inp, running_mean=None, running_var=None, weight=None, bias=None, *,
               training=False, momentum=0.9, eps=1e-5, inplace=True, compute_mode="default",
               param_dim="dim_1c11"):
    """Batch normalization over every axis but 1 (the channels) of ``inp``.

    Training normalizes with the batch statistics and, given running stats, updates them as
    upstream: ``running = momentum * running + (1 - momentum) * batch`` with the unbiased batch
    variance, written into the running tensors' own storage when ``inplace`` (else returned:
    ``(out, new_mean, new_var)``). Inference normalizes with the running statistics.
    Parameters and running stats hold C elements ((1, C, 1, 1) or (C,)).
    """
    return _batch_norm(inp, running_mean, running_var, weight, bias, training, momentum, eps,
                       inplace)


def _batch_norm(inp, running_mean, running_var, weight, bias, training, momentum, eps,
                inplace, views=None):
    """`batch_norm`'s body, positional (BatchNorm layers call it directly); ``views``: an eval
    layer's `_aten.LayerViews` of its parameters and statistics."""
    # under autocast the input arrives in float16 while parameters and running stats stay
    # float32 (upstream's rule; the output takes the input's dtype). The statistics of a float16
    # input are computed in float32, as upstream's kernels do: float16 sums over N*H*W values
    # lose the weight gradient entirely (|error| ~17 where float32 gives ~2e-3).
    if not isinstance(inp, Tensor):
        inp = Tensor(inp)
    if _amp._enabled:
        (inp,) = _amp.cast_for_compute(inp)
    out_dtype = None
    if inp._data.dtype == np.float16:
        out_dtype = np.dtype(np.float16)
        inp = inp.astype(np.float32)
    what = "batch_norm"
    has_mean, has_var = running_mean is not None, running_var is not None
    if not training and type(running_mean) is Tensor and type(running_var) is Tensor \
            and isinstance(weight, Tensor) and isinstance(bias, Tensor):
        # inference with every per-channel tensor given (an eval BatchNorm layer): the checks
        # of `_check_bn_args` inline, and nothing else below applies
        c = inp._data.shape[1] if inp._data.ndim >= 2 else None
        if c is None or running_mean._data.size != c or running_var._data.size != c \
                or weight._data.size != c or bias._data.size != c:
            _check_bn_args(what, inp, running_mean, running_var, weight, bias)  # raises
        op = _BatchNorm(eps, _real(momentum, "momentum", "batch_norm"), False, True, True, True)
        if views is not None:
            op.cache = views
        out = apply(op, inp, weight, bias, running_mean, running_var)
        return out if out_dtype is None else out.astype(out_dtype)
    c = _check_bn_args(what, inp, running_mean, running_var, weight, bias)
    if training:
        _check_batch_stats(what, inp, "pass training=False to normalize by running statistics")
    if not training and not (has_mean and has_var):
        raise ValueError(f"{public_function() or what}: running_mean and running_var are "
                         "needed when training=False")
    if training and inplace:
        for t, name in ((running_mean, "running_mean"), (running_var, "running_var")):
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"{public_function() or what}: {name} must be a Tensor to be "
                                f"updated in place, got {type(t).__name__}")
    has_stats = has_mean or has_var
    if training and inp._data.size == 0:
        # an empty batch has no statistics (ATen's kernel refuses it): as upstream, an empty
        # output, through the affine map so that weight and bias get their (zero) gradients,
        # and the running statistics left alone
        out = _empty_batch_affine(inp, c, weight, bias)
        out = out if out_dtype is None else out.astype(out_dtype)
        return (out, running_mean, running_var) if has_stats and not inplace else out
    inputs = [inp] + [_tensor(t) for t in (weight, bias) if t is not None]
    if has_stats:
        # a missing one of the pair is stood in for by its initial value; its update is dropped
        for t, fill in ((running_mean, 0.0), (running_var, 1.0)):
            if t is None:
                shape = _tensor(running_mean if has_mean else running_var).shape
                t = Tensor(np.full(shape, fill, np.float32), device=inp._device)
            inputs.append(_tensor(t))
    op = _BatchNorm(eps, _real(momentum, "momentum", "batch_norm"), bool(training),
                    weight is not None, bias is not None, has_stats)
    op.stats_in_place = training and inplace and has_mean and has_var and _stats_in_place(
        inp, running_mean, running_var)
    out = apply(op, *inputs)
    if not (training and has_stats):
        return out if out_dtype is None else out.astype(out_dtype)
    if op.stats_written:
        # the op wrote the buffers' own arrays (it returns only the output): a write the engine
        # counts, as `_reset`'s (capture_as_const's check of captured values relies on it)
        _note_write()
        return out if out_dtype is None else out.astype(out_dtype)
    out, new_mean, new_var = out
    if out_dtype is not None:
        out = out.astype(out_dtype)
    new_mean, new_var = (new_mean if has_mean else None), (new_var if has_var else None)
    if not inplace:
        return out, new_mean, new_var
    # written into the buffers' own storage; _reset is also what jit.trace replays. Detached:
    # the statistics carry no gradient, and _reset gives a tensor its value's graph node
    if has_mean:
        running_mean._reset(new_mean.detach())
    if has_var:
        running_var._reset(new_var.detach())
    return out


def _stats_in_place(inp, running_mean, running_var):
    """Whether a training batch norm may let ATen update ``running_mean`` and ``running_var``
    in their own arrays (skipping a copy of each for ATen and `Tensor._reset`'s write back: four
    kernels a layer on a GPU, where torch updates its buffers in place), with the values the
    copies would give. Only where `_reset` would write into the same storage and nothing can
    tell the difference:

    * plain tensors on the input's device, no PyTorchModule mirror (`_reset`'s pinned path tells
      its owner), not tracked by autodiff (`_reset` makes a computed tensor a constant); the op
      then takes their arrays only where they are what its kernel reads (the compute dtype,
      C-contiguous, not quantized: `_BatchNorm.forward`, which says so in `stats_written`),
      else copies, which a cast or a quantized value needs anyway;
    * not `Tensor._aliased`: no other tensor, view or recorded op holds the array (as
      upstream's values never change, ``old = bn.running_mean.detach()`` keeps its value and a
      recorded backward computes with what its forward saw: `_reset` gives such a tensor a
      new array). Recorded ops hold the arrays they keep by reference (numpy and CuPy views
      keep their base, the bridge's torch views the array), so the reference count sees them;
    * not traced (``jit.trace``, traced_module, a network_node graph): a trace records each op
      as a function of its inputs and each write as a `_reset` event, which it replays (and a
      dump or ``capture_as_const`` program carries) on every call. Whether the write may go in
      place depends on who holds the arrays at that call, which a recorded program cannot
      ask: a replayed in-place op would write through an alias taken after the recording
      (``old = bn.running_mean.detach()`` between two calls), and a checked call that decides
      otherwise than the recording is an op mismatch (measured: forcing the in-place path
      under ``trace(symbolic=False)`` raised TraceMismatchError at the first call after such
      an alias). Traced calls keep the copies and `_reset`, whose event decides per call.
    """
    if dispatch._trace_hook is not None or dispatch._symbolic_hook is not None:
        return False
    return all(type(t) is Tensor and t._node is None and not t._pinned_storage
               and t._device == inp._device and not t._aliased()
               for t in (running_mean, running_var))


def _empty_batch_affine(inp, c, weight, bias):
    """A batch norm's output on an empty (N, C, ...) batch: only the affine map, through which
    weight and bias get their (zero) gradients."""
    stat_shape = (1, c) + (1,) * (inp.ndim - 2)
    if weight is not None:
        inp = inp * _tensor(weight).reshape(stat_shape)
    if bias is not None:
        inp = inp + _tensor(bias).reshape(stat_shape)
    return inp


def sync_batch_norm(inp, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.9, eps=1e-5, eps_mode="additive", group=None):
    """Batch normalization whose training statistics are those of the whole batch over the
    ranks of ``group`` (default WORLD), as upstream's ``F.nn.sync_batch_norm``.

    Each rank normalizes its own part of the batch (parts may differ in size) with the mean
    and variance of all parts; the gradient flows through the statistics' sums
    (``all_reduce_sum``, whose backward all-reduces), and every rank updates ``running_mean``
    and ``running_var`` in place with the same values (``momentum`` and the unbiased variance,
    as `batch_norm`). ``eps_mode``: ``"additive"`` divides by ``sqrt(var + eps)``, ``"max"``
    by ``sqrt(max(var, eps))``. Not distributed, or not training, with ``"additive"`` it is
    `batch_norm`. ``inp`` is (N, C, ...); parameters and running stats hold C elements.
    Training on one value per channel over the group raises ``ValueError``, as `batch_norm`.
    """
    return _sync_batch_norm(inp, running_mean, running_var, weight, bias, training, momentum,
                            eps, eps_mode, group, "sync_batch_norm",
                            "pass training=False to normalize by running statistics")


def _sync_batch_norm(inp, running_mean, running_var, weight, bias, training, momentum, eps,
                     eps_mode, group, what, hint):
    """`sync_batch_norm`'s body; ``what`` names the caller in errors (the function or the
    SyncBatchNorm layer) and ``hint`` says how it avoids batch statistics."""
    mode = str(eps_mode).lower()
    if mode not in ("additive", "max"):
        raise ValueError(f"{what}: unknown eps_mode {eps_mode!r}; use 'additive' or 'max'")
    from .. import distributed as dist  # (above functional: loaded when first needed)

    synced = training and dist.is_distributed()
    if mode == "additive" and not synced:
        return batch_norm(inp, running_mean, running_var, weight, bias, training=training,
                          momentum=momentum, eps=eps)
    inp = _tensor(inp)
    c = _check_bn_args(what, inp, running_mean, running_var, weight, bias)
    stat_shape = (1, c) + (1,) * (inp.ndim - 2)
    axes = (0,) + tuple(range(2, inp.ndim))
    if training:
        if synced:
            from . import distributed as fd

            group = dist.WORLD if group is None else group

            def total(t):
                return fd.all_reduce_sum(t, group=group)
        else:
            def total(t):
                return t
        local = Tensor(np.array([inp.size // c], np.float32), device=inp._device)
        # two passes (the mean, then squared deviations from it) rather than E[x^2] - E[x]^2:
        # one more small all-reduce, and the variance loses no digits to cancellation
        sums = total(_concat_stats(inp.sum(axis=axes), local))
        count = sums[c:]
        n = float(count.numpy()[0])
        # every rank of the group sees the same count, so all of them raise (none waits for a
        # peer's next collective), before anything is updated
        _check_batch_stats(what, inp, hint, n if synced else None)
        mean = (sums[:c] / count).reshape(stat_shape)
        centered = inp - mean
        var = (total((centered * centered).sum(axis=axes)) / count).reshape(stat_shape)
    else:
        if running_mean is None or running_var is None:
            raise ValueError(f"{what}: running_mean and running_var are needed when "
                             "training=False")
        mean = _tensor(running_mean).reshape(stat_shape)
        var = _tensor(running_var).reshape(stat_shape)
        centered = inp - mean
    if mode == "max":
        from .elemwise import maximum

        var_eps = maximum(var, eps)  # (eps in var's dtype: float16 stays, float64 exact)
    else:
        var_eps = var + eps
    out = centered * var_eps ** -0.5
    if weight is not None:
        out = out * _tensor(weight).reshape(stat_shape)
    if bias is not None:
        out = out + _tensor(bias).reshape(stat_shape)
    if training and n:  # (an empty batch over the group has no statistics to take in)
        unbiased = var.detach() * (n / (n - 1.0))
        for t, batch in ((running_mean, mean), (running_var, unbiased)):
            if t is not None:
                t._reset(t * momentum + batch.detach().reshape(t.shape) * (1 - momentum))
    return out


def _concat_stats(sums, count):
    """The per-channel sums and the element count as one vector: one all-reduce carries both."""
    from .tensor import concat

    return concat([sums, count.astype(sums.dtype)])


def layer_norm(inp, normalized_shape, affine=True, weight=None, bias=None, eps=1e-5):
    """Normalize over the trailing ``normalized_shape`` dims of ``inp`` (biased variance).

    With ``affine``, ``weight`` and ``bias`` (of ``normalized_shape``) scale and shift; a
    missing one is left out.
    """
    inp = _tensor(inp)
    # (sizes from x.shape in a dumpable trace stay expressions: F.layer_norm(x, x.shape[-1:])
    # runs at other widths; equal to the input's own sizes, the check below guards nothing)
    # (a layer's tuple of ints comes back as it is; a shape of strings raises
    # ArgumentTypeError, also upstream's RuntimeError: pybind's "Unable to cast")
    shape = int_tuple(normalized_shape, "layer_norm: normalized_shape")
    k = len(shape)
    if k == 0 or tuple(inp.shape[inp.ndim - k:]) != shape or inp.ndim < k:
        raise ShapeError(f"layer_norm: normalized_shape {shape} does not match the trailing "
                         f"dims of the input of shape {inp.shape}")
    m = math.prod(shape)  # (of SymDims: an expression, the view below follows the input)
    view = (-1, m)
    if not affine:
        weight = bias = None
    for t, name in ((weight, "weight"), (bias, "bias")):
        if t is not None and _tensor(t).size != m:
            # (named: F.nn.general_norm normalizes with this function)
            raise ShapeError(f"{public_function() or 'layer_norm'}: {name} of shape "
                             f"{_tensor(t).shape} does not match the normalized shape {shape}")
    op = _Normalize(view, view, (1, m), eps, weight is not None, bias is not None,
                    family="layer_norm")
    return _normalize(op, inp, weight, bias)


def group_norm(inp, num_groups, affine=True, weight=None, bias=None, eps=1e-5):
    """Normalize each sample over groups of C / ``num_groups`` channels (biased variance).

    With ``affine``, per-channel ``weight`` and ``bias`` (C elements) scale and shift.
    """
    return _group_norm(_tensor(inp), num_groups, affine, weight, bias, eps, "group_norm")


def _group_norm(inp, num_groups, affine, weight, bias, eps, what):
    if inp.ndim < 2:
        raise ShapeError(f"{what}: expected an input (N, C, ...), got shape {inp.shape}")
    n, c = inp.shape[:2]
    # (a TracedModule's size tensor gives its SymDim or value)
    num_groups = _int(num_groups, "num_groups", what)
    if num_groups < 1 or c % num_groups:
        raise ShapeError(f"{what}: {c} channels (input shape {inp.shape}) are not divisible "
                         f"into num_groups={num_groups}")
    if not affine:
        weight = bias = None
    for t, name in ((weight, "weight"), (bias, "bias")):
        _check_param(t, c, what, name)
    # (ATen's kernel needs a non-empty spatial size: an (N, C) input keeps the array code)
    op = _Normalize((n, num_groups, -1), (n, c, -1), (1, c, 1), eps, weight is not None,
                    bias is not None, family="group_norm" if inp.ndim > 2 else None, what=what)
    return _normalize(op, inp, weight, bias)


def instance_norm(inp, affine=True, weight=None, bias=None, eps=1e-5):
    """Normalize each channel of each sample of an (N, C, ...) input on its own (biased
    variance): group_norm with one channel per group. With ``affine``, per-channel ``weight``
    and ``bias`` (C elements) scale and shift."""
    inp = _tensor(inp)
    if inp.ndim < 2:
        raise ShapeError(f"instance_norm: expected an input (N, C, ...), got shape {inp.shape}")
    # ATen's group norm kernel, not the batch norm one torch's F.instance_norm runs on (over
    # (1, N*C, ...)): forward + backward on one thread took 135 against 422 us on (8, 32, 16,
    # 16) float32 and 60 against 154 on (2, 3, 2); the latter keeps a few more bits of x's
    # gradient on two-element instances only (tests/fuzz/ops_nn.py: instance_norm)
    return _group_norm(inp, inp.shape[1], affine, weight, bias, eps, "instance_norm")


def general_norm(inp, normalized_axis, affine=True, weight=None, bias=None, eps=1e-5):
    """Normalize over the axes ``normalized_axis`` (an int or increasing ints; negative ones
    count from the end) with the biased variance; with ``affine``, ``weight`` and ``bias`` of
    the shape of those axes scale and shift. Upstream's ``F.nn.general_norm``: layer_norm over
    any axes (they are moved to the end, normalized there, and moved back)."""
    from .tensor import transpose

    inp = _tensor(inp)
    axes = [normalized_axis] if is_int(normalized_axis) or not hasattr(
        normalized_axis, "__iter__") else list(normalized_axis)
    if not all(is_int(a) or is_dim(a) for a in axes):
        raise ArgumentTypeError(f"general_norm: normalized_axis must be an int or a sequence "
                                f"of ints, got {normalized_axis!r}")
    axes = [as_int(a) for a in axes]  # (a SymDim axis: its value, a guard)
    if not axes:
        raise ArgumentError("general_norm: normalized_axis names no axis")  # (upstream asserts)
    axes = [a + inp.ndim if a < 0 else a for a in axes]
    if any(a < 0 or a >= inp.ndim for a in axes) or len(set(axes)) != len(axes):
        raise ArgumentError(f"general_norm: normalized_axis {normalized_axis!r} must name "
                            f"distinct axes of the {inp.ndim}-d input")
    if axes != sorted(axes):
        raise ValueError(f"general_norm: normalized_axis must be increasing, got {axes}; use "
                         f"{sorted(axes)} (weight and bias follow that order)")
    rest = [a for a in range(inp.ndim) if a not in axes]
    order = rest + axes
    moved = order != list(range(inp.ndim))
    x = transpose(inp, order) if moved else inp
    out = layer_norm(x, tuple(inp.shape[a] for a in axes), affine, weight, bias, eps)
    return transpose(out, [order.index(i) for i in range(inp.ndim)]) if moved else out


def local_response_norm(inp, kernel_size: int = 5, k: float = 2.0, alpha: float = 1e-4,
                        beta: float = 0.75):
    """``inp / (k + alpha * sum of inp**2 over the kernel_size channels centred on each one)**beta``
    for an (N, C, ...) input (upstream's ``F.local_response_norm``, behind ``M.LocalResponseNorm``).
    Upstream's alpha multiplies the plain sum (PyTorch's divides it by the window size first);
    ``kernel_size`` must be odd, as upstream's. Built from differentiable ops, so gradients come
    for free."""
    from .elemwise import square
    from .tensor import pad

    inp = _tensor(inp)
    if inp.dtype.kind != "f":  # complex: refused (a normalization, as batch/layer norm, as
        inp = _as_float(inp, "local_response_norm")  # upstream's); integers in float32, a
        # quantized tensor's values (its square has no quantized form)
    if inp.ndim < 3:
        raise ShapeError(f"local_response_norm: input must be (N, C, ...), got shape {inp.shape}")
    if not is_int(kernel_size) or as_int(kernel_size) < 1:  # (a SymDim: a guard)
        raise ArgumentError(f"local_response_norm: kernel_size must be an int >= 1, got "
                            f"{kernel_size!r}")
    kernel_size = as_int(kernel_size)
    if kernel_size % 2 == 0:
        # upstream's LRN asserts an odd window (megdnn: kernel_size // 2 channels on each
        # side of the centre); an even size has no centred window
        raise ArgumentError(f"local_response_norm: kernel_size must be odd (a window of "
                            f"kernel_size // 2 channels on each side, as upstream's), got "
                            f"{kernel_size}")
    half = kernel_size // 2
    channels = inp.shape[1]
    # zero channels on both sides, then add the kernel_size shifted channel windows
    sq = pad(square(inp), ((0, 0), (half, kernel_size - 1 - half)))
    window = sq[:, 0:channels]
    for i in range(1, kernel_size):
        window = window + sq[:, i:i + channels]
    return inp / (k + alpha * window) ** beta
