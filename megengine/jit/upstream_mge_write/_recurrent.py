"""Writers of recurrent networks: M.LSTM / M.RNN (RecurrentStack) as upstream's LSTMForward /
RNNForward with their flattened weight, M.LSTMCell / M.RNNCell (RecurrentLayer) as
LSTMCellForward / RNNCellForward, and `_folded_constants` (the constant weights written
inside a stack's flattened weight only)."""
import numpy as np

from ._base import _float32_values, _graph_type_of, _refuse


# --------------------------------------------------------------------------------------------
# recurrent networks: M.LSTM / M.RNN (this fork's RecurrentStack) as upstream's LSTMForward /
# RNNForward, M.LSTMCell / M.RNNCell (RecurrentLayer of one step) as LSTMCellForward /
# RNNCellForward, as upstream 1.13's own dumps of those modules hold them (its CPU runtime
# runs them from a file, at any sequence length and batch: checked)
# --------------------------------------------------------------------------------------------
_RNN_NONLINEAR = {"relu": 1, "tanh": 2}  # (megdnn's RNN NonlineMode: IDENTITY 0, RELU, TANH)


def _stack_parts(opr):
    """(states, weights) among a RecurrentStack's inputs: h0 (and c0) unless it makes zero
    states, then w_ih, w_hh, b_ih, b_hh per layer and direction, layer-major."""
    p = opr.params
    ns = 0 if p.get("zero_states") else (2 if p.get("mode") == "lstm" else 1)
    ins = list(opr.inputs)
    return ins[1:1 + ns], ins[1 + ns:]


def _constant_of(v):
    """The value of Network var ``v`` where a constant (an ImmutableTensor) makes it, else
    None."""
    owner = getattr(v, "owner", None)
    if owner is None or _graph_type_of(owner) != "ImmutableTensor":
        return None
    return np.asarray(owner.numpy())


def _stack_bias(weights):
    """Whether the stack's biases are written: not where every one is a constant of zeros
    (what M.LSTM / M.RNN of bias=False give the op), written then as upstream writes such a
    module, bias=False, its flattened weight without them."""
    biases = [v for k, v in enumerate(weights) if k % 4 >= 2]
    values = [_constant_of(v) for v in biases]
    return not all(a is not None and not a.any() for a in values)


def _folded_constants(net):
    """ids of the constant vars read only as weights of recurrent stacks whose weights are all
    constants: their values go into the stack's flattened weight (`_recurrent_stack`), so they
    are not written on their own (upstream's own files hold the flattened weight alone)."""
    readers = {}
    for opr in net.all_oprs:
        for k, v in enumerate(opr.inputs):
            readers.setdefault(id(v), []).append((opr, k))
    outputs = {id(v) for v in net.output_vars}
    folded = set()
    for opr in net.all_oprs:
        if _graph_type_of(opr) != "RecurrentStack":
            continue
        states, weights = _stack_parts(opr)
        if any(_constant_of(v) is None for v in weights):
            continue
        first = 1 + len(states)
        for v in weights:
            if id(v) not in outputs and all(_graph_type_of(o) == "RecurrentStack" and k >= first
                                            and all(_constant_of(w) is not None
                                                    for w in _stack_parts(o)[1])
                                            for o, k in readers[id(v)]):
                folded.add(id(v))
    return folded


def _flat_weight(g, opr, weights, bias, device):
    """Upstream's flattened weight of a stack, (gates * hidden, n): per layer and direction
    w_ih, w_hh and (``bias``) b_ih, b_hh, each row-major, one after the other (the layout
    upstream's RNN / LSTM read it in: measured, upstream's modules given weights this way
    compute this fork's values). Constants: one constant, as upstream's files hold it;
    otherwise each flattened (Reshape), one Concat, reshaped."""
    parts = [v for k, v in enumerate(weights) if bias or k % 4 < 2]
    rows = int(weights[0].shape[0])
    size = sum(int(np.prod(v.shape)) for v in parts)
    shape = (rows, size // rows)
    name = f"{opr.name}:flatten_weights"
    values = [_constant_of(v) for v in parts]
    if all(a is not None for a in values):
        return g.const(np.concatenate([a.astype(np.float32).reshape(-1) for a in values])
                       .reshape(shape), device, name)
    flat = [g.ids[id(v)] if len(v.shape) == 1 else g.reshape(  # (a bias: as it is)
        g.ids[id(v)], g.shape_const([int(np.prod(v.shape))], device, f"{name}{k}"),
        f"{name}{k}", (int(np.prod(v.shape)),)) for k, v in enumerate(parts)]
    k = g.concat(flat, 0, f"{name}:flat", (size,), device)
    return g.reshape(k, g.shape_const(shape, device, name), name, shape)


def _zero_states(g, opr, x, batch_axis, states_shape, device):
    """The zero initial states of a stack, (layers * directions, N, H), N the batch of
    ``x`` at each run: a zero broadcast to a shape of the input's batch, as upstream's
    init_hidden (its Fill) builds them."""
    name = f"{opr.name}:zeros"
    zero = g.const(np.zeros(1, np.float32), device, f"{name}:value")

    def shape():
        batch = g.shape_of(g.ids[id(x)], batch_axis, f"shape_of({x.name})[{batch_axis}]")
        return g.concat([g.shape_const([states_shape[0]], device, f"{name}:layers"), batch,
                         g.shape_const([states_shape[2]], device, f"{name}:hidden")], 0,
                        f"{name}:shape", (3,), device)

    return g.broadcast(zero, (1,), states_shape, name, shape)


def _recurrent_stack(g, opr, ins, outs, p, device):
    """M.LSTM / M.RNN (inference: the fork's op runs no dropout): upstream's LSTMForward (x,
    h0, c0, the flattened weight; out y, h_n, c_n and a reserve for its backward) or
    RNNForward (x, h0, the weight; out y, h_n, reserve), of (T, N, I) input: a batch-first
    input is transposed there and back (Dimshuffle), as upstream's module does; zero states
    are made from the input's batch (`_zero_states`). The file follows the input's sequence
    length and batch (upstream's operator infers its shapes at each run)."""
    mode, layers, directions = p["mode"], int(p["num_layers"]), int(p["directions"])
    lstm = mode == "lstm"
    if not lstm and mode not in _RNN_NONLINEAR:  # pragma: no cover (the fork has no other)
        _refuse(opr, f"a recurrent network of mode {mode!r}")
    _float32_values(opr, list(ins) + list(outs), "recurrent network")
    states, weights = _stack_parts(opr)
    x, y = ins[0], outs[0]
    hidden = int(weights[1].shape[1])
    t_axis, b_axis = (1, 0) if p.get("batch_first") else (0, 1)
    steps, batch = int(x.shape[t_axis]), int(x.shape[b_axis])
    data = g.ids[id(x)]
    if p.get("batch_first"):
        data = g.op("Dimshuffle", 1, 64, {0: ("i32s", [1, 0, 2]), 1: ("I", 3)}, [data],
                    [(f"{y.name}:x", (steps, batch, int(x.shape[2])))])[0]
    state_shape = (layers * directions, batch, hidden)
    if states:
        hx = [g.ids[id(v)] for v in states]
    else:
        hx = [_zero_states(g, opr, x, b_axis, state_shape, device)] * (2 if lstm else 1)
    bias = _stack_bias(weights)
    w = _flat_weight(g, opr, weights, bias, device)
    params = {0: ("I", layers), 1: ("?", directions == 2), 2: ("?", bias), 3: ("I", hidden)}
    if lstm:
        name, ptype = "LSTMForward", 89
        params.update({4: ("I", 0), 5: ("f", 0.0), 6: ("I", 1)})  # (no projection; INFERENCE)
    else:
        name, ptype = "RNNForward", 88
        params.update({4: ("f", 0.0), 5: ("I", _RNN_NONLINEAR[mode]), 6: ("I", 1)})
    seq = (steps, batch, directions * hidden)
    finals = [(v.name, tuple(v.shape)) for v in outs[1:]]
    reserve = layers * directions * steps * batch * hidden * (8 if lstm else 4)  # (as
    made = g.op(name, 1, ptype, params, [data] + hx + [w],  # upstream's files give its size)
                [(f"{y.name}:seq" if p.get("batch_first") else y.name, seq)] + finals
                + [(f"{opr.name}:reserve", (reserve,))])
    out = made[0]
    if p.get("batch_first"):
        out = g.op("Dimshuffle", 1, 64, {0: ("i32s", [1, 0, 2]), 1: ("I", 3)}, [out],
                   [(y.name, tuple(y.shape))])[0]
    g.ids[id(y)] = out
    for v, k in zip(outs[1:], made[1:]):
        g.ids[id(v)] = k


def _recurrent_cell(g, opr, ins, outs, p, device):
    """M.LSTMCell / M.RNNCell (the fork's RecurrentLayer of one step, x (N, I)): upstream's
    LSTMCellForward (x, w_ih, b_ih, h, w_hh, b_hh, c; out h', c' and the gates) and
    RNNCellForward (x, w_ih, b_ih, h, w_hh, b_hh; out h', its nonlinearity a parameter). A
    layer over a whole sequence (`rnn_layer` of (T, N, I): what M.LSTM / M.RNN run in training
    with dropout between layers) is refused: upstream has no operator of one direction of one
    layer (its LSTMForward runs the backward direction only beside the forward one)."""
    mode = p["mode"]
    x = ins[0]
    if len(x.shape) != 2:
        _refuse(opr, f"a recurrent layer over a whole sequence (rnn_layer of a {len(x.shape)}-d "
                     "input: M.LSTM / M.RNN in training with dropout between layers) is not "
                     "written; upstream writes such a network as one LSTMForward / RNNForward: "
                     "dump it in eval mode (M.LSTMCell / M.RNNCell are written too)")
    _float32_values(opr, list(ins) + list(outs), "recurrent cell")
    lstm = mode == "lstm"
    if lstm:
        _, h, c, w_ih, w_hh, b_ih, b_hh = ins
    else:
        (_, h, w_ih, w_hh, b_ih, b_hh), c = ins, None
    inputs = [g.ids[id(v)] for v in (x, w_ih, b_ih, h, w_hh, b_hh)]
    y = outs[0]
    hidden = int(w_hh.shape[1])
    if lstm:
        made = g.op("LSTMCellForward", 1, 1, {}, inputs + [g.ids[id(c)]],
                    [(y.name, tuple(y.shape)), (outs[2].name, tuple(outs[2].shape)),
                     (f"{opr.name}:gates", (int(x.shape[0]), 4 * hidden))])
        g.ids[id(y)] = g.ids[id(outs[1])] = made[0]  # (y: h' of the one step)
        g.ids[id(outs[2])] = made[1]
        return
    if mode not in _RNN_NONLINEAR:  # pragma: no cover (the fork has no other)
        _refuse(opr, f"a recurrent cell of mode {mode!r}")
    made = g.op("RNNCellForward", 1, 87, {0: ("I", _RNN_NONLINEAR[mode])}, inputs,
                [(y.name, tuple(y.shape))])[0]
    g.ids[id(y)] = g.ids[id(outs[1])] = made
