"""Recurrent networks (Elman RNN or LSTM, all time steps) as ops with a hand-written backward: one layer and direction (`rnn_layer`), or a whole stack (`rnn_stack`).

`megengine.module.rnn` builds its cells on `rnn_layer`, its RNN and LSTM on `rnn_stack` (on
`rnn_layer` per layer where dropout runs between layers). Run as a chain of per-step
ops (two linears, four activations, slices and products per LSTM step), a training step of an
LSTM(256, 256) over 32 steps at batch 16 took 1.7x torch's; here the input projection of all
steps is one gemm, each step is one gemm plus a few in-place elementwise passes, and backward
is one loop of the same size plus three gemms for the weights (back-propagation through time
written out). Values and gradients follow torch's ``nn.LSTM`` / ``nn.RNN``.

On the CPU a float32 LSTM layer runs oneDNN's LSTM kernels instead (what torch's own
``nn.LSTM`` runs) where they are faster: without gradients from 4 steps on, in training from 16
(`_on_onednn`); the step loop serves shorter sequences, cells, float64, the Elman RNN, CUDA
(CuPy) and a machine without torch.

`rnn_stack` runs a whole stack of layers (both directions, all layers) as one op: the modules'
call without dropout between layers. Without gradients a float32 LSTM stack on the CPU is one
call of ATen's ``lstm`` (what ``nn.LSTM`` calls); otherwise its layers are `_RecurrentLayer`
forwards and backwards on raw arrays, so an LSTM(64, 64) at seq 8, batch 4 pays one op's
bookkeeping per call instead of four ops' (zero states, the layer, two state reshapes).

The ops' backward is on raw arrays only. A gradient that is itself differentiated needs each
step's operations recorded, so `megengine.module.rnn` runs its per-step composition instead
while more than one GradManager records (`higher_order_possible`).
"""
import threading
from contextlib import nullcontext
from operator import is_

import numpy as np

from ..core import dispatch as _dispatch
from ..core.dispatch import KERNEL_FLOATS, Op, apply, xp_of
from ..core.ops import ShapeError
from ..core.ops import matmul as _matmul
from ..core.tensor import promote_types
from . import _aten
from ._args import _tensor

__all__ = ["rnn_layer", "rnn_stack", "WeightViews", "higher_order_possible"]

_MODES = ("lstm", "tanh", "relu")
_WHOLE_SEQUENCE_FACTORS = 1 << 16  # gate values (see _lstm_forward)
_ONEDNN_LSTM = 2  # mkldnn_rnn_layer's mode for an LSTM (torch's cell-type enum)
_FLOAT32 = np.dtype(np.float32)


def higher_order_possible():
    """Whether more than one GradManager records: a gradient computed now may be differentiated
    again, which the fused op cannot record (its backward is raw array code)."""
    return _dispatch._recording > 1


class _RecurrentLayer(Op):
    """Inputs: x (T, N, I) (or (N, I): one step, a cell), h0 (N, H), for LSTM c0 (N, H), then
    w_ih (G, I), w_hh (G, H), b_ih (G,), b_hh (G,) with G = 4H for LSTM (gates i, f, g, o
    stacked as torch stacks them), H otherwise. Outputs: y (T, N, H) (every step's h), h_n and,
    for LSTM, c_n. ``reverse`` runs the steps from last to first (the backward direction of a
    bidirectional layer)."""

    none_for_unused_grads = True  # a cell uses h_n / c_n only: no zeros made for y's gradient

    def __init__(self, mode, reverse):
        self.mode, self.reverse = mode, reverse

    # ----- forward -----

    def forward(self, x, h0, *rest):
        lstm = self.mode == "lstm"
        if lstm:
            c0, w_ih, w_hh, b_ih, b_hh = rest
        else:
            c0, (w_ih, w_hh, b_ih, b_hh) = None, rest
        dtype = x.dtype
        for a in rest + (h0,):
            if a.dtype != dtype:
                dtype = promote_types(dtype, a.dtype)
        if dtype.kind != "f":
            dtype = np.dtype(np.float32)
        self.x_shape, self.cell = x.shape, x.ndim == 2
        x = x.astype(dtype, copy=False).reshape((-1,) + x.shape[-2:])
        w_ih, w_hh, h0 = (a.astype(dtype, copy=False) for a in (w_ih, w_hh, h0))
        self.x, self.w_ih, self.w_hh, self.h0 = x, w_ih, w_hh, h0
        xp = xp_of(x)
        steps, n = x.shape[:2]
        hidden = w_hh.shape[1]
        if lstm and type(x) is np.ndarray and dtype == np.float32 and _aten.use_aten(x, "rnn") \
                and _on_onednn(steps, any(self.needs_input_grad)):
            y, h_n, c_n = self._lstm_onednn(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
            return (y.reshape(n, hidden) if self.cell else y), h_n, c_n
        bias = (b_ih.astype(dtype, copy=False) + b_hh.astype(dtype, copy=False)).reshape(-1)
        if lstm:
            c0 = c0.astype(dtype, copy=False)
            y, h_n, c_n = self._lstm_forward(xp, x, h0, c0, w_ih, w_hh, bias, steps, n, hidden)
            return (y.reshape(n, hidden) if self.cell else y), h_n, c_n
        y = self._rnn_forward(xp, x, h0, w_ih, w_hh, bias, steps, n, hidden)
        return (y.reshape(n, hidden) if self.cell else y), y[self._order(steps)[-1]].copy()

    def _order(self, steps):
        return range(steps - 1, -1, -1) if self.reverse else range(steps)

    def _lstm_forward(self, xp, x, h0, c0, w_ih, w_hh, bias, steps, n, hidden):
        dtype = x.dtype
        # sigmoid(z) = tanh(z / 2) / 2 + 1/2: with the i, f, o rows of the weights and bias
        # halved (exact: a power of two), one tanh pass over all four gates, then one scale and
        # one shift, activates every gate of a step (sigmoid's own exp, add and reciprocal
        # would be three passes over three gates plus tanh over the fourth)
        half, shift, lower = _gate_constants(xp, hidden, dtype)
        # the halving goes into the weights once, or (few rows: a cell) into each step's gates,
        # whichever is the smaller pass
        scale_weights = steps * n >= hidden
        if scale_weights:
            xg = _matmul(x.reshape(steps * n, -1), (w_ih * half[:, None]).T)
            xg += bias * half
            w_rec = w_hh * half[:, None]
        else:
            xg = _matmul(x.reshape(steps * n, -1), w_ih.T)
            xg += bias
            w_rec = w_hh
        gates = xg.reshape(steps, n, 4 * hidden)  # each step's pre-activations, then its i, f, g, o
        cells = xp.empty((steps, n, hidden), dtype)
        tanh_c = xp.empty((steps, n, hidden), dtype)
        y = xp.empty((steps, n, hidden), dtype)
        tmp = xp.empty((n, hidden), dtype)
        train = any(self.needs_input_grad)
        # small layers (all gates within ~256 KB: in cache after the loop) make backward's
        # factors for all steps at once after the loop, in a dozen passes instead of ten small
        # ones per step (per-call overhead dominates there); large ones per step (below)
        whole = train and gates.size <= _WHOLE_SEQUENCE_FACTORS
        if train:
            e = xp.empty((steps, n, 4, hidden), dtype)
            k = xp.empty((steps, n, hidden), dtype)
        if train and not whole:
            # What backward multiplies dc (gates i, f, g) and dh (gate o) by, per step, made
            # here while the step's values are in cache (a third of the time the same products
            # took as whole-sequence passes in backward): e[t] = (g i', c_(t-1) f', i g',
            # tanh(c) o') with each gate's derivative from its value (sigmoid: a (1 - a),
            # tanh: (1 + a)(1 - a)), and k[t] = o (1 - tanh(c)^2), through which dh reaches dc.
            d = xp.empty((n, 4 * hidden), dtype)
            d4 = d.reshape(n, 4, hidden)
            d_minus = xp.empty((n, 4 * hidden), dtype)
        step_gemm = _step_gemm(xp, w_rec, h0, y, gates)
        prev, c = None, c0
        for t in self._order(steps):
            step_gemm(t, prev)
            a = gates[t]
            if not scale_weights:
                a *= half
            xp.tanh(a, out=a)
            a *= half
            a += shift
            a4 = a.reshape(n, 4, hidden)
            ct, tc = cells[t], tanh_c[t]
            xp.multiply(a4[:, 1], c, out=ct)
            xp.multiply(a4[:, 0], a4[:, 2], out=tmp)
            ct += tmp
            xp.tanh(ct, out=tc)
            xp.multiply(a4[:, 3], tc, out=y[t])
            if train and not whole:
                xp.subtract(a, lower, out=d)
                xp.subtract(1, a, out=d_minus)
                d *= d_minus
                et = e[t]
                xp.multiply(a4[:, 2], d4[:, 0], out=et[:, 0])
                xp.multiply(c, d4[:, 1], out=et[:, 1])
                xp.multiply(a4[:, 0], d4[:, 2], out=et[:, 2])
                xp.multiply(tc, d4[:, 3], out=et[:, 3])
                xp.multiply(tc, tc, out=tmp)
                xp.subtract(1, tmp, out=tmp)
                xp.multiply(a4[:, 3], tmp, out=k[t])
            c = ct
            prev = t
        if whole:
            self._factors_at_once(xp, gates, cells, tanh_c, c0, lower, e, k, steps, n, hidden)
        if train:
            self.gates, self.e, self.k, self.y = gates, e, k, y
        # (one step: c is all of ``cells``, which nothing else keeps, so it needs no copy)
        return y, y[prev].copy(), c if steps == 1 else c.copy()

    def _factors_at_once(self, xp, gates, cells, tanh_c, c0, lower, e, k, steps, n, hidden):
        """``e`` and ``k`` of `_lstm_forward` for all steps in whole-sequence passes."""
        a4 = gates.reshape(steps, n, 4, hidden)
        d = gates - lower
        d *= 1 - gates
        d4 = d.reshape(steps, n, 4, hidden)
        c_prev = _previous(xp, cells, c0, self.reverse)
        xp.multiply(a4[:, :, 2], d4[:, :, 0], out=e[:, :, 0])
        xp.multiply(c_prev, d4[:, :, 1], out=e[:, :, 1])
        xp.multiply(a4[:, :, 0], d4[:, :, 2], out=e[:, :, 2])
        xp.multiply(tanh_c, d4[:, :, 3], out=e[:, :, 3])
        square = tanh_c * tanh_c
        xp.subtract(1, square, out=square)
        xp.multiply(a4[:, :, 3], square, out=k)

    onednn = None  # oneDNN's tensors for its backward, when the oneDNN path trained

    def _lstm_onednn(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        """The layer by oneDNN's LSTM kernels (``mkldnn_rnn_layer`` and its backward, what
        torch's own ``nn.LSTM`` runs on the CPU; float32 only), which fuse each step's gemm and
        gate passes. One thread, forward without gradients at seq 32, batch 16, hidden 256:
        5.8 ms against 8.4 ms for the step loop here; training: see `_on_onednn`.
        Only a training forward keeps oneDNN's workspace for the backward."""
        view, c = _aten.view, np.ascontiguousarray
        hidden = w_hh.shape[1]
        train = any(self.needs_input_grad)
        args = [view(c(a, dtype=np.float32)) for a in (x, w_ih, w_hh, b_ih, b_hh, h0, c0)]
        # (inference under no_grad: 1.5-4.5% faster, paired, though no input requires grad)
        with nullcontext() if train else _aten.torch_module().no_grad():
            y, h_n, c_n, workspace = _aten.aten().mkldnn_rnn_layer(
                *args, self.reverse, [], _ONEDNN_LSTM, hidden, 1, True, False, False, train)
        if train:
            self.onednn = (args, y, h_n, c_n, workspace)
        return _aten.array(y), _aten.array(h_n), _aten.array(c_n)

    def _lstm_onednn_backward(self, gy, gh, gc):
        args, y, h_n, c_n, workspace = self.onednn
        hidden = self.w_hh.shape[1]

        def view(g, shape):
            return None if g is None else _aten.view(
                np.ascontiguousarray(g, dtype=np.float32).reshape(shape))

        grads = _aten.aten().mkldnn_rnn_layer_backward(
            *args[:5], args[5], args[6], y, h_n, c_n, view(gy, tuple(y.shape)),
            view(gh, tuple(h_n.shape)), view(gc, tuple(c_n.shape)), self.reverse,
            _ONEDNN_LSTM, hidden, 1, True, True, False, [], False, workspace)
        gx, gw_ih, gw_hh, gb_ih, gb_hh, gh0, gc0 = (_aten.fresh_gradient(g) for g in grads)
        needs = self.needs_input_grad
        out = (gx.reshape(self.x_shape), gh0, gc0, gw_ih, gw_hh, gb_ih, gb_hh)
        return tuple(g if need else None for g, need in zip(out, needs))

    def _rnn_forward(self, xp, x, h0, w_ih, w_hh, bias, steps, n, hidden):
        y = _matmul(x.reshape(steps * n, -1), w_ih.T)
        y += bias
        y = y.reshape(steps, n, hidden)  # step t's input projection until it is h_t
        step_gemm = _step_gemm(xp, w_hh, h0, y, y)
        prev = None
        for t in self._order(steps):
            step_gemm(t, prev)
            h = y[t]
            if self.mode == "tanh":
                xp.tanh(h, out=h)
            else:
                xp.maximum(h, 0, out=h)
            prev = t
        self.y = y
        return y

    # ----- backward -----

    def backward(self, gy, gh, gc=None):
        if self.onednn is not None:
            return self._lstm_onednn_backward(gy, gh, gc)
        lstm = self.mode == "lstm"
        x, y, w_hh = self.x, self.y, self.w_hh
        xp = xp_of(x)
        steps, n = x.shape[:2]
        hidden = w_hh.shape[1]
        if gy is not None:
            gy = gy.astype(x.dtype, copy=False).reshape(y.shape)
        order = self._order(steps)
        if lstm:
            dg, dh, dc = self._lstm_backward(xp, gy, gh, gc, order, steps, n, hidden)
        else:
            dg, dh = self._rnn_backward(xp, gy, gh, order, steps, n, hidden)
        needs = self.needs_input_grad
        dg2 = dg.reshape(steps * n, -1)
        gx = _matmul(dg2, self.w_ih).reshape(self.x_shape) if needs[0] else None
        gh0 = dh if needs[1] else None
        k = 3 if lstm else 2  # where the weights start among the inputs
        gw_ih = _matmul(dg2.T, x.reshape(steps * n, -1)) if needs[k] else None
        gw_hh = None
        if needs[k + 1]:
            h_prev = _previous(xp, y, self.h0, self.reverse)
            gw_hh = _matmul(dg2.T, h_prev.reshape(steps * n, hidden))
        # both biases enter every step's gates as a sum: each gets the same gradient (a copy
        # for the second, as no two gradients may share memory)
        gb_ih = dg2.sum(0) if needs[k + 2] else None
        gb_hh = None
        if needs[k + 3]:
            gb_hh = dg2.sum(0) if gb_ih is None else gb_ih.copy()
        grads = [gx, gh0] + ([dc if needs[2] else None] if lstm else [])
        return tuple(grads + [gw_ih, gw_hh, gb_ih, gb_hh])

    def _lstm_backward(self, xp, gy, gh, gc, order, steps, n, hidden):
        f = self.gates.reshape(steps, n, 4, hidden)[:, :, 1]
        e, k = self.e, self.k
        dtype = e.dtype
        dg = xp.empty((steps, n, 4, hidden), dtype)
        # (dh is written in place by a later step's gemm and by y's gradient: one step without
        # y's gradient, a cell's backward, reads gh as it is)
        written = steps > 1 or gy is not None
        dh = xp.zeros((n, hidden), dtype) if gh is None else gh.astype(dtype, copy=written)
        dc = xp.zeros((n, hidden), dtype) if gc is None else gc.astype(dtype, copy=True)
        tmp = xp.empty((n, hidden), dtype)
        w_hh = self.w_hh
        prev = None
        for t in reversed(order):  # sequential only through dh and dc
            if prev is not None:
                _matmul(dg[prev].reshape(n, 4 * hidden), w_hh, out=dh)
                dc *= f[prev]
            if gy is not None:
                dh += gy[t]
            xp.multiply(dh, k[t], out=tmp)
            dc += tmp
            xp.multiply(dc[:, None, :], e[t, :, :3], out=dg[t, :, :3])
            xp.multiply(dh, e[t, :, 3], out=dg[t, :, 3])
            prev = t
        dh = _matmul(dg[prev].reshape(n, 4 * hidden), w_hh)
        dc *= f[prev]
        return dg, dh, dc

    def _rnn_backward(self, xp, gy, gh, order, steps, n, hidden):
        y = self.y
        # the activation's derivative from its output: 1 - y^2 (tanh), y > 0 (relu)
        d = 1 - y * y if self.mode == "tanh" else (y > 0).astype(y.dtype)
        dz = xp.empty_like(y)
        dh = xp.zeros((n, hidden), y.dtype) if gh is None else gh.astype(y.dtype, copy=True)
        w_hh = self.w_hh
        prev = None
        for t in reversed(order):
            if prev is not None:
                _matmul(dz[prev], w_hh, out=dh)
            if gy is not None:
                dh += gy[t]
            xp.multiply(dh, d[t], out=dz[t])
            prev = t
        return dz, _matmul(dz[prev], w_hh)


class WeightViews:
    """Torch views of a stack's weight arrays for `rnn_stack`'s ATen call, made once and kept
    while the same arrays come back (a view costs ~0.4 us; a bidirectional two-layer LSTM has
    16 weights), and the zero tensor for absent initial states (a new one each call cost 6 us
    at LSTM(64, 64), seq 8, batch 4: a fresh allocation for oneDNN). Only float32 arrays are
    viewed, without a copy: the views alias their memory, and a replaced array (a new
    ``_data``, a new Parameter) fails the identity test and is viewed anew. Registered as an
    engine cache (`dispatch.cache_holds`): a write in place into a viewed array (an optimizer
    step, ``load_state_dict``, ``set_value``) first empties it (`release`). Holds the last
    arrays it viewed (one set) until the next call. Copies and pickles as empty: views are
    remade where the arrays live."""

    __slots__ = ("arrays", "views", "zero", "__weakref__")

    def __init__(self):
        self.arrays, self.views, self.zero = (), None, None

    def __reduce__(self):
        return WeightViews, ()

    def of(self, weights):
        """The views of ``weights``; None when one is not float32 (ATen's oneDNN LSTM is
        float32 only: the caller takes its array path)."""
        arrays = self.arrays
        if len(arrays) == len(weights) and all(map(is_, arrays, weights)):
            return self.views
        view = _aten.view
        self.views = [view(w) for w in weights] if all(
            w.dtype == _FLOAT32 for w in weights) else None
        self.arrays = tuple(weights)
        _dispatch.cache_holds(self, self.arrays, arrays)
        return self.views

    def release(self):
        """Let the arrays go (a write in place into one of them is coming: `Tensor._shared`)."""
        before, self.arrays, self.views = self.arrays, (), None
        _dispatch.cache_holds(self, (), before)

    def __del__(self):
        try:
            self.release()
        except (AttributeError, TypeError):  # (at exit, modules may be gone)
            pass

    def zeros(self, shape):
        """A float32 zero tensor of ``shape`` (the stack's zero initial states; ATen's lstm
        only reads them, and no caller sees it), kept for the next call."""
        zero = self.zero
        if zero is None or zero.shape != shape:
            torch = _aten.torch_module()
            zero = self.zero = torch.zeros(shape, dtype=torch.float32)
        return zero


class _RecurrentStack(Op):
    """A whole multi-layer, optionally bidirectional recurrent stack (what ``M.LSTM`` / ``M.RNN``
    compute without dropout between layers) as one op.

    Inputs: x (T, N, I) ((N, T, I) with ``batch_first``); unless ``zero_states``, h0 (L * D, N,
    H) and for LSTM c0; then per layer and direction (layer-major, as torch's flat weights)
    w_ih, w_hh, b_ih, b_hh. Outputs: y (T, N, D * H) (batch first likewise), h_n (L * D, N, H)
    and for LSTM c_n.

    Without gradients, a float32 LSTM on the CPU is one call of ATen's whole-stack LSTM
    (``torch.lstm``, what ``nn.LSTM`` runs: oneDNN's kernels per layer and direction) on
    views of the arrays; the zero states are made there. (Not for the Elman RNN or float64:
    ATen runs those step by step, measured no faster than the step loop here.) Otherwise the
    layers run as `_RecurrentLayer` forwards on raw arrays, kept for a backward that runs
    theirs in reverse (the input gradient of a bidirectional layer is the sum of its
    directions')."""

    none_for_unused_grads = True

    def __init__(self, mode, num_layers, bidirectional, batch_first, zero_states):
        # (plain values only: megengine.jit compares, records and dumps an op by its __dict__;
        # the caller's WeightViews comes through `_lent`)
        self.mode, self.num_layers = mode, num_layers
        self.directions = 2 if bidirectional else 1
        self.batch_first, self.zero_states = batch_first, zero_states

    def _n_states(self):
        return 0 if self.zero_states else (2 if self.mode == "lstm" else 1)

    def forward(self, x, *rest):
        ns = self._n_states()
        states, weights = rest[:ns], rest[ns:]
        if self.mode == "lstm" and type(x) is np.ndarray and x.dtype == _FLOAT32 \
                and not any(self.needs_input_grad) and _aten.use_aten(x, "rnn"):
            cache = getattr(_lent, "views", None) or WeightViews()
            views = cache.of(weights)
            if views is not None and (not states or all(s.dtype == _FLOAT32 for s in states)):
                return self._lstm_aten(x, states, views, cache, weights[1].shape[1])
        return self._forward_layers(x, states, weights)

    def _lstm_aten(self, x, states, views, cache, hidden):
        view = _aten.view
        if states:
            hx = (view(states[0]), view(states[1]))
        else:  # (ATen only reads them: one zero tensor serves both)
            zero = cache.zeros((self.num_layers * self.directions,
                                x.shape[0 if self.batch_first else 1], hidden))
            hx = (zero, zero)
        # under no_grad: in grad mode ATen's lstm took 6% longer at LSTM(256, 256), seq 32,
        # batch 16 (paired, one thread), though no input requires a gradient
        with _aten.torch_module().no_grad():
            y, h_n, c_n = _aten.op("lstm")(view(x), hx, views, True, self.num_layers, 0.0,
                                           False, self.directions == 2, self.batch_first)
        array = _aten.array
        return array(y), array(h_n), array(c_n)

    def _forward_layers(self, x, states, weights):
        lstm = self.mode == "lstm"
        xp = xp_of(x)
        needs = self.needs_input_grad
        ns = len(states)
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        n, hidden = x.shape[1], weights[1].shape[1]
        zero = xp.zeros((n, hidden), x.dtype) if not states else None  # (never written)
        state_needs = (needs[1:1 + ns] + (False, False))[:2]
        layer_in, need_in = x, needs[0]
        self.layers, finals_h, finals_c = [], [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.directions):
                i = layer * self.directions + d
                w = weights[4 * i:4 * i + 4]
                op = _RecurrentLayer(self.mode, d == 1)
                op.needs_input_grad = ((need_in, state_needs[0])
                                       + ((state_needs[1],) if lstm else ())
                                       + needs[1 + ns + 4 * i:5 + ns + 4 * i])
                h0 = zero if zero is not None else states[0][i]
                if lstm:
                    c0 = zero if zero is not None else states[1][i]
                    y, h_n, c_n = op.forward(layer_in, h0, c0, *w)
                    finals_c.append(c_n)
                else:
                    y, h_n = op.forward(layer_in, h0, *w)
                finals_h.append(h_n)
                outs.append(y)
                self.layers.append(op)
            layer_in = outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=2)
            # an upper layer's input carries a gradient when anything below it does
            need_in = any(any(op.needs_input_grad) for op in self.layers)
        y = layer_in.transpose(1, 0, 2) if self.batch_first else layer_in
        if not any(needs):
            self.layers = None
        h_n = xp.stack(finals_h)
        return (y, h_n, xp.stack(finals_c)) if lstm else (y, h_n)

    def backward(self, gy, gh, gc=None):
        lstm = self.mode == "lstm"
        needs = self.needs_input_grad
        ns = self._n_states()
        directions, layers = self.directions, self.layers
        xp = xp_of(layers[0].x)
        if gy is not None and self.batch_first:
            gy = gy.transpose(1, 0, 2)
        hidden = layers[0].w_hh.shape[1]
        n = layers[0].x.shape[1]
        grads_w = [None] * (4 * len(layers))
        g_states = [xp.zeros((len(layers), n, hidden), layers[0].x.dtype) if need else None
                    for need in needs[1:1 + ns]]
        g_top = gy
        for layer in range(self.num_layers - 1, -1, -1):
            g_in = None
            for d in range(directions):
                i = layer * directions + d
                op = layers[i]
                if not any(op.needs_input_grad):
                    continue
                g_y = None if g_top is None else (
                    g_top if directions == 1 else g_top[:, :, d * hidden:(d + 1) * hidden])
                got = op.backward(g_y, None if gh is None else gh[i],
                                  *((None if gc is None else gc[i],) if lstm else ()))
                k = 3 if lstm else 2
                grads_w[4 * i:4 * i + 4] = got[k:]
                for s, g in zip(g_states, got[1:k]):
                    if s is not None and g is not None:
                        s[i] = g
                if got[0] is not None:
                    g_in = got[0] if g_in is None else g_in + got[0]
            g_top = g_in
        gx = g_top if needs[0] else None
        if gx is not None and self.batch_first:
            gx = gx.transpose(1, 0, 2)
        return (gx, *g_states, *grads_w)


def rnn_stack(mode, x, hx, weights, num_layers=1, bidirectional=False, batch_first=False,
              views=None):
    """A stacked recurrent network in one op: ``num_layers`` layers, each one direction or two
    (``bidirectional``: outputs concatenated on the last axis, the backward direction second),
    over ``x`` (T, N, I), or (N, T, I) with ``batch_first``. ``mode``: "lstm", "tanh" or
    "relu". ``hx``: None (zero states), h0 (L * D, N, H), or for LSTM (h0, c0). ``weights``:
    w_ih, w_hh, b_ih, b_hh per layer and direction, layer-major (torch's ``_flat_weights``
    order). ``views``: a `WeightViews` kept by the caller between calls. No dropout between
    layers (``M.LSTM`` / ``M.RNN`` apply theirs with `rnn_layer` per layer). Returns (y, h_n)
    for the Elman RNN and (y, h_n, c_n) for LSTM, y (T, N, D * H) (batch first likewise)."""
    if mode not in _MODES:
        raise ValueError(f"rnn_stack: mode must be one of {_MODES}, got {mode!r}")
    directions = 2 if bidirectional else 1
    if len(weights) != 4 * num_layers * directions:
        raise ShapeError(f"rnn_stack: {num_layers} layers of {directions} direction(s) take "
                         f"{4 * num_layers * directions} weights (w_ih, w_hh, b_ih, b_hh each), "
                         f"got {len(weights)}")
    if hx is None:
        states = ()
    elif mode == "lstm":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError("rnn_stack: an LSTM's hx is a pair (h0, c0) or None")
        states = tuple(hx)
    else:
        states = (hx,)
    if states:
        x = _tensor(x)
        if x.ndim != 3:
            raise ShapeError(f"rnn_stack: x must be (seq, batch, input) (batch first if "
                             f"batch_first), got shape {x.shape}")
        want = (num_layers * directions, x.shape[0 if batch_first else 1],
                _tensor(weights[1]).shape[1])
        for name, state in zip(("h0", "c0"), states):
            state = _tensor(state)
            if state.shape != want:
                raise ShapeError(f"rnn_stack: {name} must be (layers * directions, batch, "
                                 f"hidden) = {want}, got shape {state.shape}")
    op = _RecurrentStack(mode, num_layers, bool(bidirectional), bool(batch_first), hx is None)
    inputs = [_tensor(t) for t in (x,) + states + tuple(weights)]
    if views is None:
        return apply(op, *inputs)
    before, _lent.views = getattr(_lent, "views", None), views
    try:
        return apply(op, *inputs)
    finally:
        _lent.views = before


# The WeightViews that the running `rnn_stack` call was given (None: views made per call, as
# when a traced program replays the op without its module)
_lent = threading.local()


def _previous(xp, states, first, reverse):
    """Each step's previous state, ``states`` (steps, ...) shifted by one in the order the
    steps ran, ``first`` (h0 or c0) for the first step run: one step's is ``first`` itself."""
    if len(states) == 1:
        return first.reshape(states.shape)
    prev = xp.empty_like(states)
    if reverse:
        prev[:-1], prev[-1] = states[1:], first
    else:
        prev[1:], prev[0] = states[:-1], first
    return prev


def _on_onednn(steps, train):
    """Whether a float32 LSTM layer of ``steps`` steps runs on oneDNN's kernels rather than the
    step loop here, training (``train``) or not: oneDNN's calls carry a fixed cost (~0.1 ms
    forward, its workspace too when training) that pays from ~16 steps on in training, from
    ~4 in inference. Measured with one thread, oneDNN / step loop: forward + backward of one
    layer, seq 8 batch 4 hidden 64 1.30; seq 16: batch 8 hidden 128 0.97, batch 16 hidden 256
    0.93; seq 24 batch 8 hidden 128 0.72; seq 32: batch 16 hidden 256 0.85, batch 4 hidden 64
    0.58; seq 64 batch 4 hidden 32 0.35; one step (a cell) 2.3. Forward without gradients (CPU
    time of the calling thread, the machine shared), at (batch, hidden) (1, 8), (4, 64),
    (16, 128) and (16, 256): one step (an ``LSTMCell``) 5.7, 3.9, 1.4, 1.2; two steps 2.7,
    1.7, 1.2, 1.0; four 1.8, 0.95, 0.87, 0.73; eight 0.82, 0.63, 0.73, 0.83; sixteen 0.45-0.81.
    (Earlier versions ran every forward without gradients on oneDNN: an ``LSTMCell`` called
    without gradients took 1.4-5.7x the step loop's time at these sizes; bench_layers.py
    ``--case lstm_cell_infer``, megengine / torch, base and head alternated twice: 1.88-2.30x
    -> 1.44-1.56x at batch 16, hidden 128; ``lstm_cell_small_infer`` (4, 64) 2.61x and more
    -> 1.13-1.16x.)"""
    return steps >= (_ONEDNN_MIN_STEPS if train else _ONEDNN_INFER_MIN_STEPS)


_ONEDNN_MIN_STEPS = 16
_ONEDNN_INFER_MIN_STEPS = 4
_constants = {}


def _gate_constants(xp, hidden, dtype):
    """Per-gate (i, f, g, o) vectors of length 4 * hidden: ``half`` (1/2, 1/2, 1, 1/2),
    ``shift`` (1/2, 1/2, 0, 1/2) and ``lower`` (0, 0, -1, 0), made once per size (a cell
    stepped in a loop would make them at every step)."""
    key = (hidden, np.dtype(dtype).str)
    got = _constants.get(key) if xp is np else None  # (CuPy: arrays of the current device)
    if got is None:
        parts = [xp.full(4 * hidden, v, dtype) for v in (0.5, 0.5, 0.0)]
        for a, v in zip(parts, (1, 0, -1)):
            a[2 * hidden:3 * hidden] = v
        got = tuple(parts)
        if xp is np:
            if len(_constants) > 64:  # (many sizes: keep the cache small)
                _constants.clear()
            _constants[key] = got
    return got


def _step_gemm(xp, w, h0, y, acc):
    """``step(t, prev)``: ``acc[t] += h @ w.T`` with h = ``y[prev]`` (``h0`` when prev is None):
    the recurrent gemm of one step, in place.

    On the CPU ATen's (MKL's) addmm does it: at batch 16, (16, 256) @ (256, 1024) took 122 us
    per step with one thread against 196 us for numpy's OpenBLAS (with W^T contiguous; 231 us
    through the transposed view); torch views of the buffers are made once per layer. One
    step (a cell) adds the gemm to the input projection in numpy: the four views would cost
    more than MKL saves on a single gemm.
    """
    if len(y) > 1 and type(y) is np.ndarray and y.dtype in KERNEL_FLOATS \
            and _aten.use_aten(y, "rnn"):
        torch = _aten.torch_module()
        view = _aten.view
        tw = view(xp.ascontiguousarray(w)).t()  # MKL's fast case: B transposed (NT)
        th0, ty, tacc = view(xp.ascontiguousarray(h0)), view(y), view(acc)
        addmm = torch.addmm

        def step(t, prev):
            out = tacc[t]
            addmm(out, th0 if prev is None else ty[prev], tw, out=out)

        return step
    if len(y) == 1:  # one step: no copy of W^T for one use
        def step(t, prev):
            acc[t] += _matmul(h0 if prev is None else y[prev], w.T)

        return step
    w_t = xp.ascontiguousarray(w.T)

    def step(t, prev):
        acc[t] += xp.matmul(h0 if prev is None else y[prev], w_t)

    return step


def rnn_layer(mode, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse=False):
    """One recurrent layer over all steps of ``x`` (T, N, I) in one op; or one step when ``x``
    is (N, I) (a cell). ``mode``: "lstm", "tanh" or "relu". Returns (y, h_n) for the Elman RNN
    and (y, h_n, c_n) for LSTM, y (T, N, H) (for a cell (N, H), equal to h_n)."""
    if mode not in _MODES:
        raise ValueError(f"rnn_layer: mode must be one of {_MODES}, got {mode!r}")
    states = (h0, c0) if mode == "lstm" else (h0,)
    return apply(_RecurrentLayer(mode, bool(reverse)),
                 *[_tensor(t) for t in (x,) + states + (w_ih, w_hh, b_ih, b_hh)])
