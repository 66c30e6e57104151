"""Recurrent layers: RNNCell, LSTMCell, and the multi-layer (bidirectional) RNN and LSTM."""
import math
import numbers
from collections import OrderedDict
from typing import Optional, Tuple

import numpy as np

from .. import functional as F
from ..core._trace_option import as_int, is_dim
from ..core.ops import ShapeError
from ..functional.rnn import WeightViews, higher_order_possible, rnn_layer, rnn_stack
from ..core.tensor import Parameter, Tensor
from . import init
from .module import Module

__all__ = ["RNNCell", "LSTMCell", "RNN", "LSTM"]

_NONLINEARITIES = {"tanh": F.tanh, "relu": F.relu}


class RNNCellBase(Module):
    """Weights of one recurrent step with ``num_chunks`` gates stacked along dim 0 (PyTorch's
    layout): ``weight_ih`` (gates * hidden, input), ``weight_hh`` (gates * hidden, hidden),
    ``bias_ih``/``bias_hh`` (gates * hidden,). Without ``bias`` the biases are buffers, as
    upstream keeps them (its checkpoints load with ``strict=True``), that the steps never add:
    a checkpoint loaded into them changes nothing (`_biases`)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, **kwargs):
        super().__init__(**kwargs)
        # (sizes from x.shape in a dumpable trace: their values, guards)
        input_size, hidden_size = (as_int(v) if is_dim(v) else v for v in (input_size,
                                                                           hidden_size))
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be an int >= 1, got {v!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.gate_hidden_size = num_chunks * hidden_size
        g = self.gate_hidden_size
        self.weight_ih = Parameter(np.zeros((g, input_size), np.float32))
        self.weight_hh = Parameter(np.zeros((g, hidden_size), np.float32))
        if bias:
            self.bias_ih = Parameter(np.zeros((g,), np.float32))
            self.bias_hh = Parameter(np.zeros((g,), np.float32))
        else:
            self.bias_ih = Tensor(np.zeros((g,), np.float32))
            self.bias_hh = Tensor(np.zeros((g,), np.float32))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def _biases(self):
        """(b_ih, b_hh) that a step adds: zeros without ``bias``, whatever a checkpoint wrote
        into the buffers (upstream's RNN/LSTM ignore them; its cells add them, against its
        docs' "does not use bias weights")."""
        if self.bias:
            return self.bias_ih, self.bias_hh
        zero = F.zeros_like(self.bias_ih)
        return zero, zero

    def _gates(self, x, h):
        b_ih, b_hh = (self.bias_ih, self.bias_hh) if self.bias else (None, None)
        return F.linear(x, self.weight_ih, b_ih) + F.linear(h, self.weight_hh, b_hh)

    def _check_input(self, x):
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ShapeError(f"{type(self).__name__}: input must be (batch, input_size="
                             f"{self.input_size}), got shape {x.shape}")

    def _check_state(self, x, *states):
        # (the batch sizes compared only as plain ints: a traced size stays unguarded)
        n = x.shape[0] if type(x.shape[0]) is int else None
        for name, t in zip(("h", "c"), states):
            shape = tuple(getattr(t, "shape", ()))
            if len(shape) != 2 or shape[1] != self.hidden_size or \
                    (n is not None and type(shape[0]) is int and shape[0] != n):
                raise ShapeError(f"{type(self).__name__}: the state {name} must be (batch, "
                                 f"hidden_size={self.hidden_size}) for an input of shape "
                                 f"{tuple(x.shape)}, got shape {getattr(t, 'shape', t)}")

    def _zeros(self, x):
        return F.zeros((x.shape[0], self.hidden_size), dtype=x.dtype, device=x.device)


class RNNCell(RNNCellBase):
    """One Elman step: ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``, ``act`` tanh or relu.
    ``forward(input (N, input_size), hx (N, hidden_size) or None = zeros) -> h'``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", **kwargs):
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got "
                             f"{nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, num_chunks=1, **kwargs)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        self._check_input(input)
        if hx is None:
            h = self._zeros(input)
        else:
            self._check_state(input, hx)  # (the zeros made above fit by construction)
            h = hx
        if higher_order_possible():  # per-op steps: their gradient can be differentiated
            return _NONLINEARITIES[self.nonlinearity](self._gates(input, h))
        return rnn_layer(self.nonlinearity, input, h, None, self.weight_ih, self.weight_hh,
                         *self._biases())[1]


class LSTMCell(RNNCellBase):
    """One LSTM step with gates (input, forget, cell, output) stacked in that order:
    ``c' = f * c + i * g``, ``h' = o * tanh(c')``.
    ``forward(input (N, input_size), (h, c) or None = zeros) -> (h', c')``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, **kwargs):
        super().__init__(input_size, hidden_size, bias, num_chunks=4, **kwargs)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None):
        self._check_input(input)
        if hx is None:
            h, c = self._zeros(input), self._zeros(input)
        else:
            h, c = hx
            self._check_state(input, h, c)
        if not higher_order_possible():
            return rnn_layer("lstm", input, h, c, self.weight_ih, self.weight_hh,
                             *self._biases())[1:]
        n = self.hidden_size  # per-op steps: their gradient can be differentiated
        gates = self._gates(input, h)
        i = F.sigmoid(gates[:, 0:n])
        f = F.sigmoid(gates[:, n:2 * n])
        g = F.tanh(gates[:, 2 * n:3 * n])
        o = F.sigmoid(gates[:, 3 * n:4 * n])
        c_next = f * c + i * g
        return o * F.tanh(c_next), c_next


class RNNBase(Module):
    """Stacked, optionally bidirectional recurrent layers over (seq, batch, feature) input
    (``batch_first``: (batch, seq, feature)). ``cells[layer][direction]`` holds the weights."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0, bidirectional: bool = False,
                 proj_size: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) \
                or not 0 <= dropout <= 1:
            raise ValueError("Dropout should be a float in [0, 1], which indicates the "
                             f"probability of an element to be zero, got {dropout!r}")
        if proj_size != 0:
            raise ValueError(f"{type(self).__name__}: proj_size={proj_size} is not supported "
                             f"(the cells have no projection weights); use proj_size=0")
        num_layers = as_int(num_layers) if is_dim(num_layers) else num_layers  # (a guard)
        if not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
            raise ValueError(f"{type(self).__name__}: num_layers must be an int >= 1, got "
                             f"{num_layers!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.proj_size = proj_size
        self.cells = [
            [self.create_cell(layer) for _ in range(self.num_directions)]
            for layer in range(num_layers)
        ]

    def _flat_pieces(self):
        """Upstream 1.13's RNN/LSTM keep one ``_flatten_weights`` Parameter of shape
        (gates * hidden, n), the weights their forward uses (its cells' weights, also saved, go
        unused): per layer and direction, ``weight_ih``, ``weight_hh`` and with ``bias``
        ``bias_ih``, ``bias_hh``, each row-major, one after the other (measured against
        upstream's output). Its pieces: (cell, weight name) in that order."""
        names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if self.bias else ())
        return [(f"cells.{layer}.{d}.{name}", cell, name) for layer, row in enumerate(self.cells)
                for d, cell in enumerate(row) for name in names]

    def _flat_weights(self):
        flat = np.concatenate([getattr(cell, name).numpy().reshape(-1)
                               for _, cell, name in self._flat_pieces()])
        return flat.reshape(self.cells[0][0].gate_hidden_size, -1)

    def _state_dict(self, rst=None, prefix="", keep_var=False):
        """With upstream's ``_flatten_weights`` (`_flat_pieces`) first, as upstream orders its
        entries, so that upstream loads the checkpoint with ``strict=True`` and computes with
        these weights; loading here takes the cells' values from it (`_upstream_state`)."""
        if rst is None:
            rst = OrderedDict()
        flat = self._flat_weights()
        rst[(type(self), prefix + "_flatten_weights")] = Tensor(flat) if keep_var else flat
        return super()._state_dict(rst, prefix, keep_var)

    def _upstream_state(self, prefix, state_dict):
        """A checkpoint holding upstream's ``_flatten_weights`` (`_flat_pieces`) loads into the
        cells, in place of its unused cell entries."""
        key = prefix + "_flatten_weights"
        if key not in state_dict:
            return state_dict
        flat = state_dict[key]
        flat = (flat.numpy() if isinstance(flat, Tensor) else np.asarray(flat)).reshape(-1)
        pieces = [(prefix + key_, getattr(cell, name).shape)
                  for key_, cell, name in self._flat_pieces()]
        need = sum(int(np.prod(shape)) for _, shape in pieces)
        if flat.size != need:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: upstream's {key} holds {flat.size} "
                f"values, this layer's weights {need}: it was saved from another layer "
                "(input_size, hidden_size, num_layers, bidirectional, bias)")
        out = {k: v for k, v in state_dict.items() if k != key}
        at = 0
        for name, shape in pieces:
            n = int(np.prod(shape))
            out[name] = flat[at:at + n].reshape(shape)
            at += n
        return out

    def __getstate__(self):
        # pickled with upstream's _flatten_weights (`_flat_pieces`), which upstream's forward
        # computes with (mge.save of the module, a TracedModule file); loading here takes the
        # cells' weights from it again (`__setstate__`)
        state = dict(super().__getstate__())
        state["_flatten_weights"] = Parameter(self._flat_weights())
        return state

    def __setstate__(self, state):
        # An RNN/LSTM pickled by upstream (mge.save of the module, a TracedModule file) holds
        # the weights its forward uses in _flatten_weights (`_flat_pieces`): the cells take them.
        flat = state.pop("_flatten_weights", None)
        if "_modules" in state:
            state["_modules"] = [k for k in state["_modules"] if k != "_flatten_weights"]
        super().__setstate__(state)
        if flat is not None:
            values = self._upstream_state("", {"_flatten_weights": flat})
            for key, cell, name in self._flat_pieces():
                getattr(cell, name)._reset(values[key])

    def _layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.num_directions * self.hidden_size

    def reset_parameters(self) -> None:
        for row in self.cells:
            for cell in row:
                cell.reset_parameters()

    def _check_input(self, input):
        if input.ndim != 3 or input.shape[2] != self.input_size:
            raise ShapeError(f"{type(self).__name__}: input must be (seq, batch, input_size="
                             f"{self.input_size}) (batch first if batch_first), got shape "
                             f"{input.shape}")

    def _run(self, input, hx):
        """Returns (output (L, N, D * H), final states per layer * direction)."""
        if higher_order_possible():
            if hx is None:
                hx = self.init_hidden(input.shape[1], input)
            return self._run_steps(input, hx)
        # dropout between layers: one op per layer and direction (`rnn_layer`), all steps at once.
        # Without hx one zero state serves every layer (the op never writes its inputs): no
        # (layers, N, H) zeros to index per layer
        zero = None if hx is not None else F.zeros(
            (input.shape[1], self.hidden_size), dtype=input.dtype, device=input.device)
        layer_in, finals = input, []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                cell = self.cells[layer][d]
                if zero is not None:
                    h, c = zero, zero
                else:
                    state = self._state_at(hx, layer * self.num_directions + d)
                    h, c = (state, None) if self.mode != "lstm" else state
                y, *final = rnn_layer(self.mode, layer_in, h, c, cell.weight_ih, cell.weight_hh,
                                      *cell._biases(), reverse=d == 1)
                outs.append(y)
                finals.append(final[0] if self.mode != "lstm" else tuple(final))
            layer_in = outs[0] if len(outs) == 1 else F.concat(outs, axis=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
        return layer_in, finals

    def _run_steps(self, input, hx):
        """`_run` as a chain of cell steps, each of differentiable ops (higher-order
        gradients)."""
        steps = input.shape[0]
        layer_in = [input[t] for t in range(steps)]
        finals = []
        for layer in range(self.num_layers):
            outs_per_dir = []
            for d in range(self.num_directions):
                cell = self.cells[layer][d]
                state = self._state_at(hx, layer * self.num_directions + d)
                order = range(steps) if d == 0 else range(steps - 1, -1, -1)
                outs = [None] * steps
                for t in order:
                    state = cell(layer_in[t], state)  # (per-op: higher_order_possible())
                    outs[t] = self._hidden_of(state)
                outs_per_dir.append(outs)
                finals.append(state)
            layer_in = [outs_per_dir[0][t] if self.num_directions == 1
                        else F.concat([outs_per_dir[0][t], outs_per_dir[1][t]], axis=1)
                        for t in range(steps)]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_in = [F.dropout(x, self.dropout, training=True) for x in layer_in]
        return F.stack(layer_in, axis=0), finals

    def forward(self, input: Tensor, hx=None):
        self._check_input(input)
        if not higher_order_possible() and not (
                self.dropout > 0 and self.training and self.num_layers > 1):
            # the whole stack as one op (`rnn_stack`): no zero states, concatenations, stacks
            # or transposes as ops of their own
            weights = [w for row in self.cells for cell in row
                       for w in (cell.weight_ih, cell.weight_hh) + cell._biases()]
            views = self.__dict__.get("_weight_views")
            if views is None:  # (made at the first call, also after a load: never saved)
                views = self.__dict__["_weight_views"] = WeightViews()
            y, *finals = rnn_stack(self.mode, input, hx, weights, self.num_layers,
                                   self.bidirectional, self.batch_first, views)
            return y, (finals[0] if len(finals) == 1 else tuple(finals))
        if self.batch_first:
            input = input.transpose((1, 0, 2))  # (seq, batch, feature)
        output, finals = self._run(input, hx)  # (hx None: zero states)
        if self.batch_first:
            output = output.transpose((1, 0, 2))
        return output, self._pack_finals(finals)


def _zeros_like_args(like):
    return {} if like is None else {"dtype": like.dtype, "device": like.device}


class RNN(RNNBase):
    """Multi-layer Elman RNN: ``h_t = act(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh)`` per layer.

    ``forward(input, h_0=None) -> (output, h_n)``: input (L, N, input_size) (``batch_first``:
    (N, L, input_size)), h_0 and h_n (num_directions * num_layers, N, hidden_size), output
    (L, N, num_directions * hidden_size). ``nonlinearity``: "tanh" (default) or "relu".
    """

    def __init__(self, *args, nonlinearity: str = "tanh", **kwargs):
        self.nonlinearity = nonlinearity
        super().__init__(*args, **kwargs)

    @property
    def mode(self):
        return self.nonlinearity

    def create_cell(self, layer):
        return RNNCell(self._layer_input_size(layer), self.hidden_size, self.bias,
                       self.nonlinearity)

    def init_hidden(self, batch_size, like=None):
        """Zero hidden state for ``batch_size`` sequences: float32 on the default device, as
        upstream's, or ``like``'s dtype and device (forward passes its input)."""
        return F.zeros((self.num_directions * self.num_layers, batch_size, self.hidden_size),
                       **_zeros_like_args(like))

    @staticmethod
    def _state_at(hx, i):
        return hx[i]

    @staticmethod
    def _hidden_of(state):
        return state

    @staticmethod
    def _pack_finals(finals):
        return _stack(finals)


class LSTM(RNNBase):
    """Multi-layer LSTM (gates as :class:`LSTMCell`).

    ``forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n))`` with the shapes of
    :class:`RNN`; c_0 and c_n are shaped like h_0 and h_n.
    """

    mode = "lstm"

    def create_cell(self, layer):
        return LSTMCell(self._layer_input_size(layer), self.hidden_size, self.bias)

    def init_hidden(self, batch_size, like=None):
        """Zero ``(h, c)`` for ``batch_size`` sequences, as :meth:`RNN.init_hidden`'s."""
        shape = (self.num_directions * self.num_layers, batch_size, self.hidden_size)
        return F.zeros(shape, **_zeros_like_args(like)), F.zeros(shape, **_zeros_like_args(like))

    @staticmethod
    def _state_at(hx, i):
        h, c = hx
        return h[i], c[i]

    @staticmethod
    def _hidden_of(state):
        return state[0]

    @staticmethod
    def _pack_finals(finals):
        return _stack([h for h, _ in finals]), _stack([c for _, c in finals])


def _stack(states):
    """Final states (N, H) per layer and direction as (layers * directions, N, H); one layer's
    as a reshape, which costs less than a stack of one."""
    if len(states) == 1:
        return states[0].reshape((1,) + tuple(states[0].shape))
    return F.stack(states, axis=0)
