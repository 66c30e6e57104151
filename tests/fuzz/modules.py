"""Fuzz generators for megengine.module layers against torch.nn: random hyper-parameters, train
and eval, a few steps; outputs, input gradients, parameter gradients and running buffers."""
import numpy as np
import torch

import megengine as mge
import megengine.module as M
from megengine.autodiff import GradManager

from .gen import Check, Layout, Mismatch, close, flat, layout, pick, registry, shape, values
from .ops_nn2 import normalized_axes

OPS, op = registry("module")


def _randomize(tmod, rng):
    """Non-default torch parameters (norm weights of 1 and biases of 0 hide mistakes); a
    ``running_var`` stays positive."""
    with torch.no_grad():
        for name, p in list(tmod.named_parameters()) + list(tmod.named_buffers()):
            if not p.dtype.is_floating_point:
                continue
            lo = 0.5 if "var" in name else -1.0
            p.copy_(torch.tensor(values(rng, tuple(p.shape), "float32", lo, 1.5)))


def _np(t):
    return t.detach().numpy()


def compare(desc, mmod, tmod, rng, batches, to_mge, train=True, buffers=(), tol=(2e-4, 2e-4),
            diff_inputs=True, call=None):
    """Run ``mmod`` and ``tmod`` on the same ``batches`` (a list of steps, each a list of numpy
    inputs) and compare. ``to_mge(get)`` maps torch's tensors (``get(torch_name)``: a value or
    a gradient) to {megengine parameter or buffer name: array}: it loads torch's random values
    into ``mmod`` and then maps torch's gradients for the comparison. ``buffers``: megengine
    names compared after every step (BatchNorm's running statistics). ``call(module, *xs)``
    (default ``module(*xs)``) returns the outputs."""
    call = call or (lambda m, *xs: m(*xs))
    _randomize(tmod, rng)
    tparams = dict(tmod.named_parameters())
    tstate = dict(tparams, **dict(tmod.named_buffers()))
    mmod.load_state_dict({k: np.ascontiguousarray(v, np.float32) for k, v in
                          to_mge(lambda n: _np(tstate[n])).items()}, strict=False)
    mmod.train(train)
    tmod.train(train)
    mparams = dict(mmod.named_parameters())
    grads_of = list(to_mge(lambda n: _np(tstate[n])))
    for step, xs in enumerate(batches):
        what = f"{desc} step {step}"
        fl = [i for i, x in enumerate(xs) if diff_inputs and np.asarray(x).dtype == np.float32]
        # float inputs through non-contiguous views too (transposes, strided slices, flips)
        lays = [layout(rng, np.asarray(x), bcast=False) if np.asarray(x).dtype.kind == "f"
                else Layout(np.asarray(x), lambda t: t, "contig") for x in xs]
        what += " layouts=" + ",".join(lay.name for lay in lays)
        tx = [torch.tensor(lay.stored, requires_grad=i in fl) for i, lay in enumerate(lays)]
        mx = [mge.tensor(lay.stored, dtype=lay.stored.dtype) for lay in lays]
        for p in tmod.parameters():
            p.grad = None
        for p in mparams.values():
            p.grad = None
        gm = GradManager().attach(list(mparams.values()) + [mx[i] for i in fl])
        with gm:
            out = call(mmod, *[lay.view(x) for lay, x in zip(lays, mx)])
            outs = [o for o in flat(out) if o is not None]
            dys = [mge.tensor(values(rng, tuple(o.shape), "float32")) for o in outs]
            gm.backward(outs, dys)
        tout = [o for o in flat(call(tmod, *[lay.view(x) for lay, x in zip(lays, tx)]))
                if o is not None]
        if len(tout) != len(outs):
            raise Mismatch(f"{what}: {len(outs)} outputs, torch gives {len(tout)}")
        for k, (o, t) in enumerate(zip(outs, tout)):
            if tuple(o.shape) != tuple(t.shape):
                raise Mismatch(f"{what}: output {k} shape {tuple(o.shape)}, torch "
                               f"{tuple(t.shape)}")
            close(o.numpy(), _np(t), tol, f"{what}: output {k}")
        torch.autograd.backward(tout, [torch.tensor(d.numpy()) for d in dys])
        for i in fl:
            tg = tx[i].grad if tx[i].grad is not None else torch.zeros_like(tx[i])
            g = mx[i].grad
            got = np.zeros(tuple(tx[i].shape), np.float32) if g is None else g.numpy()
            close(got, _np(tg), tol, f"{what}: grad of input {i}")

        def tgrad(n):  # (a buffer's "gradient" is never compared)
            p = tparams.get(n)
            return _np(p.grad if p is not None and p.grad is not None
                       else torch.zeros_like(tstate[n]))
        tgrads = to_mge(tgrad)
        for name in grads_of:
            if name not in mparams:
                continue
            g = mparams[name].grad
            want = tgrads[name]
            got = np.zeros(want.shape, np.float32) if g is None else g.numpy()
            if got.shape != want.shape:
                raise Mismatch(f"{what}: grad of {name} shape {got.shape}, want {want.shape}")
            close(got, want, tol, f"{what}: grad of parameter {name}")
        state = dict(mmod.named_buffers())
        tbuf = to_mge(lambda n: _np(tstate[n]))
        for name in buffers:
            close(state[name].numpy(), tbuf[name], tol, f"{what}: buffer {name}")
    return "ok"


def same_names(mmod, shapes=None):
    """``to_mge`` for a layer whose names match torch's; ``shapes`` reshapes some of them."""
    shapes = shapes or {}

    own = dict(list(mmod.named_parameters()) + list(mmod.named_buffers()))

    def to_mge(get):
        out = {}
        for n, t in own.items():
            try:
                v = get(n)
            except KeyError:  # ours only (an RNN cell's zero biases without ``bias``)
                v = np.zeros(t.shape, np.float32)
            out[n] = v.reshape(shapes.get(n, v.shape))
        return out
    return to_mge


def _steps(rng, shp, n=None, lo=-2.0, hi=2.0):
    n = n or int(rng.integers(1, 3))
    return [[values(rng, shp, "float32", lo, hi)] for _ in range(n)]


# ----- dense and convolution layers -----

@op("Linear")
def _linear(rng):
    i, o, bias = int(rng.integers(1, 6)), int(rng.integers(1, 6)), bool(rng.random() < 0.7)
    lead = tuple(int(d) for d in rng.integers(1, 4, size=int(rng.integers(1, 3))))
    mm, tm = M.Linear(i, o, bias=bias), torch.nn.Linear(i, o, bias=bias)
    return Check(f"Linear({i}, {o}, bias={bias}) x{lead + (i,)}", lambda: compare(
        "Linear", mm, tm, rng, _steps(rng, lead + (i,)), same_names(mm)))


def _conv_layer(nd, transposed):
    def gen(rng):
        g = int(rng.integers(1, 3))
        cin, cout = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
        k = tuple(int(v) for v in rng.integers(1, 4, size=nd))
        stride = tuple(int(v) for v in rng.integers(1, 3, size=nd))
        dil = tuple(int(v) for v in rng.integers(1, 3, size=nd))
        pad = tuple(int(rng.integers(0, kk)) for kk in k)
        bias = bool(rng.random() < 0.7)
        sp = tuple(int(v) for v in rng.integers(4, 7 if nd < 3 else 5, size=nd))
        x = (int(rng.integers(1, 3)), cin) + sp
        kw = dict(stride=stride, padding=pad, dilation=dil, groups=g, bias=bias)
        if transposed:
            opad = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dil))
            mcls = {2: M.ConvTranspose2d, 3: M.ConvTranspose3d}[nd]
            tcls = {2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[nd]
            mm = mcls(cin, cout, k, output_padding=opad, **kw)
            tm = tcls(cin, cout, k, output_padding=opad, **kw)
            wshape = (g, cin // g, cout // g) + k if g > 1 else (cin, cout) + k
        else:
            if any((s + 2 * p - d * (kk - 1) - 1) < 0 for s, p, d, kk in zip(sp, pad, dil, k)):
                pad = tuple(kk - 1 for kk in k)
                kw["padding"] = pad
            if nd == 1:  # upstream's Conv1d takes ints only
                kw = {n: v[0] if isinstance(v, tuple) else v for n, v in kw.items()}
            mcls = {1: M.Conv1d, 2: M.Conv2d, 3: M.Conv3d}[nd]
            tcls = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[nd]
            kk = k[0] if nd == 1 else k
            mm, tm = mcls(cin, cout, kk, **kw), tcls(cin, cout, kk, **kw)
            wshape = (g, cout // g, cin // g) + k if g > 1 else (cout, cin) + k
        shapes = {"weight": wshape, "bias": (1, cout) + (1,) * nd}
        return Check(f"{type(mm).__name__}({cin}, {cout}, {k}, {kw}) x{x}", lambda: compare(
            type(mm).__name__, mm, tm, rng, _steps(rng, x, 1), same_names(mm, shapes),
            tol=(5e-4, 5e-4)))
    return gen


for _nd, _t in ((1, False), (2, False), (3, False), (2, True), (3, True)):
    op(("ConvTranspose" if _t else "Conv") + f"{_nd}d")(_conv_layer(_nd, _t))


# ----- normalization -----

def _bn(nd):
    def gen(rng):
        c = int(rng.integers(1, 4))
        mom = float(pick(rng, [0.9, 0.5, 0.0, float(rng.uniform(0.05, 0.95))]))
        affine, track = bool(rng.random() < 0.8), bool(rng.random() < 0.8)
        train = bool(rng.random() < 0.6)  # (eval without running stats: batch statistics)
        rest = {1: pick(rng, [(), (int(rng.integers(1, 4)),)]), 2: (2, 3)}[nd]
        x = (int(rng.integers(2, 4)), c) + rest
        mm = {1: M.BatchNorm1d, 2: M.BatchNorm2d}[nd](c, momentum=mom, affine=affine,
                                                       track_running_stats=track)
        # upstream: running = momentum * running + (1 - momentum) * batch; torch's momentum
        # is the weight of the batch
        tm = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d}[nd](
            c, momentum=1 - mom, affine=affine, track_running_stats=track)
        bufs = ("running_mean", "running_var") if track else ()
        names = (("weight", "bias") if affine else ()) + bufs

        desc = f"BatchNorm{nd}d({c}, momentum={mom}, affine={affine}, track={track}) " \
               f"{'train' if train else 'eval'} x{x}"
        return Check(desc, lambda: compare(
            desc, mm, tm, rng, _steps(rng, x, 2), _bn_map(mm, names), train=train,
            buffers=bufs if train else (), tol=(5e-4, 5e-4)))
    return gen


def _bn_map(mm, names):
    # upstream's per-channel parameters and buffers are (1, C, 1, 1); torch's are (C,)
    state = dict(list(mm.named_parameters()) + list(mm.named_buffers()))

    def to_mge(get):
        return {n: get(n).reshape(tuple(state[n].shape)) for n in names}
    return to_mge


op("BatchNorm1d")(_bn(1))
op("BatchNorm2d")(_bn(2))


@op("GroupNorm")
def _group_norm(rng):
    g = int(rng.integers(1, 4))
    c, affine = g * int(rng.integers(1, 3)), bool(rng.random() < 0.8)
    x = (int(rng.integers(1, 3)), c) + pick(rng, [(), (3,), (2, 3)])
    mm, tm = M.GroupNorm(g, c, affine=affine), torch.nn.GroupNorm(g, c, affine=affine)
    if x[2:] == () and c == g:  # torch refuses groups of one element (upstream normalizes)
        x += (3,)
    return Check(f"GroupNorm({g}, {c}, affine={affine}) x{x}", lambda: compare(
        "GroupNorm", mm, tm, rng, _steps(rng, x), same_names(mm), tol=(1e-3, 1e-3)))


@op("LayerNorm")
def _layer_norm(rng):
    norm = tuple(int(v) for v in rng.integers(2, 4, size=int(rng.integers(1, 3))))
    affine = bool(rng.random() < 0.8)
    x = (int(rng.integers(1, 3)),) + norm
    mm = M.LayerNorm(norm, affine=affine)
    tm = torch.nn.LayerNorm(norm, elementwise_affine=affine)
    return Check(f"LayerNorm({norm}, affine={affine}) x{x}", lambda: compare(
        "LayerNorm", mm, tm, rng, _steps(rng, x), same_names(mm), tol=(1e-3, 1e-3)))


@op("InstanceNorm")
def _instance_norm(rng):
    c, affine = int(rng.integers(1, 4)), bool(rng.random() < 0.8)
    x = (int(rng.integers(1, 3)), c, int(rng.integers(2, 4)), int(rng.integers(2, 4)))
    mm, tm = M.InstanceNorm(c, affine=affine), torch.nn.InstanceNorm2d(c, affine=affine)
    return Check(f"InstanceNorm({c}, affine={affine}) x{x}", lambda: compare(
        "InstanceNorm", mm, tm, rng, _steps(rng, x), same_names(mm), tol=(1e-3, 1e-3)))


# ----- embedding, activations, pooling, dropout -----

@op("Embedding")
def _embedding(rng):
    n, d = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    pad = None  # upstream: "padding_idx: should be set to None, not supported now"
    idx = rng.integers(0, n, size=tuple(int(v) for v in rng.integers(1, 4, size=2))).astype(
        np.int32)
    mm = M.Embedding(n, d, padding_idx=pad)
    tm = torch.nn.Embedding(n, d, padding_idx=pad)
    return Check(f"Embedding({n}, {d}, padding_idx={pad}) idx{idx.shape}", lambda: compare(
        "Embedding", mm, tm, rng, [[idx]], same_names(mm),
        call=lambda m, i: m(i if isinstance(m, M.Module) else i.long())))


@op("PReLU")
def _prelu(rng):
    c = int(rng.integers(1, 4))
    n = pick(rng, [1, c])
    x = (int(rng.integers(1, 3)), c, 2, 3)
    mm, tm = M.PReLU(n), torch.nn.PReLU(n)
    return Check(f"PReLU({n}) x{x}", lambda: compare(
        "PReLU", mm, tm, rng, _steps(rng, x), _bn_map(mm, ("weight",))))


@op("MaxPool2d")
def _max_pool(rng):
    k = int(rng.integers(1, 4))
    s, p = int(rng.integers(1, 3)), int(rng.integers(0, k // 2 + 1))
    x = (1, 2, int(rng.integers(k, 6)), int(rng.integers(k, 6)))
    mm, tm = M.MaxPool2d(k, s, p), torch.nn.MaxPool2d(k, s, p)
    # distinct values: no ties that the frameworks break differently
    steps = [[(rng.permutation(int(np.prod(x))).reshape(x) / 7).astype(np.float32)]]
    return Check(f"MaxPool2d({k}, {s}, {p}) x{x}", lambda: compare(
        "MaxPool2d", mm, tm, rng, steps, lambda get: {}))


@op("AvgPool2d")
def _avg_pool(rng):
    k = int(rng.integers(1, 4))
    s, p = int(rng.integers(1, 3)), int(rng.integers(0, k // 2 + 1))
    mode = pick(rng, ["average_count_exclude_padding", "average"])
    x = (1, 2, int(rng.integers(k, 6)), int(rng.integers(k, 6)))
    mm = M.AvgPool2d(k, s, p, mode=mode)
    tm = torch.nn.AvgPool2d(k, s, p, count_include_pad=mode == "average")
    return Check(f"AvgPool2d({k}, {s}, {p}, {mode}) x{x}", lambda: compare(
        "AvgPool2d", mm, tm, rng, _steps(rng, x, 1), lambda get: {}))


@op("Dropout")
def _dropout(rng):
    p = float(rng.uniform(0, 0.9))
    x = (int(rng.integers(1, 4)), 3)
    mm, tm = M.Dropout(p), torch.nn.Dropout(p)
    return Check(f"Dropout({p:.2f}) eval x{x}", lambda: compare(
        "Dropout", mm, tm, rng, _steps(rng, x), lambda get: {}, train=False))


# ----- recurrent layers and attention -----

def _rnn_names(layers, bidir):
    """{our name: torch's} for RNN/LSTM: cells.<layer>.<direction>.<w> against <w>_l<layer>
    (with _reverse for the backward direction)."""
    out = {}
    for layer in range(layers):
        for d in range(2 if bidir else 1):
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                out[f"cells.{layer}.{d}.{w}"] = f"{w}_l{layer}" + ("_reverse" if d else "")
    return out


def _rnn(kind):
    def gen(rng):
        i, h = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        layers, bidir = int(rng.integers(1, 3)), bool(rng.random() < 0.5)
        bias, batch_first = bool(rng.random() < 0.8), bool(rng.random() < 0.3)
        kw = dict(num_layers=layers, bias=bias, batch_first=batch_first, bidirectional=bidir)
        if kind == "RNN":
            nl = pick(rng, ["tanh", "relu"])
            mm, tm = M.RNN(i, h, nonlinearity=nl, **kw), torch.nn.RNN(i, h, nonlinearity=nl,
                                                                       **kw)
        else:
            mm, tm = M.LSTM(i, h, **kw), torch.nn.LSTM(i, h, **kw)
        t, n = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        x = values(rng, (n, t, i) if batch_first else (t, n, i), "float32", -1, 1)
        hshape = (layers * (2 if bidir else 1), n, h)
        xs = [x]
        if rng.random() < 0.5:  # an initial state
            xs += [values(rng, hshape, "float32", -1, 1)
                   for _ in range(2 if kind == "LSTM" else 1)]
        names = _rnn_names(layers, bidir)
        gates = h * (4 if kind == "LSTM" else 1)

        def to_mge(get):  # without ``bias``, ours are zero buffers, torch has none
            return {m: get(tn) if bias or "bias" not in m else np.zeros(gates, np.float32)
                    for m, tn in names.items()}

        def call(m, x, *hx):
            if not hx:
                return m(x)
            return m(x, tuple(hx) if len(hx) == 2 else hx[0])
        desc = f"{kind}({i}, {h}, {kw}) x{x.shape} hx={len(xs) > 1}"
        return Check(desc, lambda: compare(desc, mm, tm, rng, [xs], to_mge, call=call,
                                           tol=(5e-4, 5e-4)))
    return gen


op("RNN")(_rnn("RNN"))
op("LSTM")(_rnn("LSTM"))


def _cell(kind):
    def gen(rng):
        i, h, bias = int(rng.integers(1, 4)), int(rng.integers(1, 4)), bool(rng.random() < 0.8)
        n = int(rng.integers(1, 3))
        if kind == "RNNCell":
            nl = pick(rng, ["tanh", "relu"])
            mm = M.RNNCell(i, h, bias=bias, nonlinearity=nl)
            tm = torch.nn.RNNCell(i, h, bias=bias, nonlinearity=nl)
        else:
            mm, tm = M.LSTMCell(i, h, bias=bias), torch.nn.LSTMCell(i, h, bias=bias)
        xs = [values(rng, (n, i), "float32", -1, 1)]
        if rng.random() < 0.6:
            xs += [values(rng, (n, h), "float32", -1, 1)
                   for _ in range(2 if kind == "LSTMCell" else 1)]

        def call(m, x, *hx):
            if not hx:
                return m(x)
            return m(x, tuple(hx) if len(hx) == 2 else hx[0])
        desc = f"{kind}({i}, {h}, bias={bias}) x{xs[0].shape} hx={len(xs) > 1}"
        return Check(desc, lambda: compare(desc, mm, tm, rng, [xs], same_names(mm), call=call,
                                           tol=(5e-4, 5e-4)))
    return gen


op("RNNCell")(_cell("RNNCell"))
op("LSTMCell")(_cell("LSTMCell"))


@op("MultiHeadAttention")
def _mha(rng):
    heads = int(rng.integers(1, 3))
    e = heads * int(rng.integers(1, 3))
    kdim = e if rng.random() < 0.6 else int(rng.integers(1, 4))
    vdim = kdim if kdim != e or rng.random() < 0.7 else int(rng.integers(1, 4))
    bias = bool(rng.random() < 0.7)
    n, q_len, k_len = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    mm = M.MultiHeadAttention(e, heads, bias=bias, kdim=kdim, vdim=vdim)
    tm = torch.nn.MultiheadAttention(e, heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    xs = [values(rng, (n, q_len, e), "float32", -1, 1),
          values(rng, (n, k_len, kdim), "float32", -1, 1),
          values(rng, (n, k_len, vdim), "float32", -1, 1)]
    mask = None
    if rng.random() < 0.4:  # key padding: True hides a key; every query keeps one key
        mask = rng.random((n, k_len)) < 0.4
        mask[:, 0] = False
    need = bool(rng.random() < 0.3)
    amask = None
    if rng.random() < 0.4:  # an (L, S) attention mask: True hides; key 0 stays visible
        amask = rng.random((q_len, k_len)) < 0.4
        amask[:, 0] = False

    def to_mge(get):
        if kdim == e and vdim == e:
            wq, wk, wv = np.split(get("in_proj_weight"), 3)
        else:
            wq, wk, wv = get("q_proj_weight"), get("k_proj_weight"), get("v_proj_weight")
        parts = [w.T.ravel() for w in (wq, wk, wv, get("out_proj.weight"))]
        if bias:  # torch's (out, in) weights are ours transposed (ours: x @ W)
            parts += list(np.split(get("in_proj_bias"), 3)) + [get("out_proj.bias")]
        return {"io_weight_bias": np.concatenate(parts)[None]}

    def call(m, q, k, v):
        ours = isinstance(m, M.Module)
        km, am = ((None if a is None else mge.tensor(a) if ours else torch.tensor(a))
                  for a in (mask, amask))
        if ours:
            return m(q, k, v, key_padding_mask=km, attn_mask=am, need_weights=need,
                     average_attn_weights=need)
        return m(q, k, v, key_padding_mask=km, attn_mask=am, need_weights=need)
    desc = (f"MultiHeadAttention({e}, {heads}, bias={bias}, kdim={kdim}, vdim={vdim}) "
            f"q{xs[0].shape} k{xs[1].shape} key_padding_mask={mask is not None} "
            f"attn_mask={amask is not None} need_weights={need}")
    return Check(desc, lambda: compare(desc, mm, tm, rng, [xs], to_mge, call=call,
                                       tol=(5e-4, 5e-4)))


# ----- fused layers (the float forms that quantization-aware training converts) -----

_FUSED = ("ConvBn2d", "ConvBnRelu2d", "ConvRelu2d", "ConvTransposeBn2d", "ConvTransposeBnRelu2d",
          "ConvTransposeRelu2d", "LinearBn1d", "LinearBnRelu1d", "LinearRelu")


@op("fused_layers")
def _fused(rng):
    kind = pick(rng, _FUSED)
    bn, relu = "Bn" in kind, "Relu" in kind
    mom = float(pick(rng, [0.9, 0.5, float(rng.uniform(0.05, 0.95))]))
    bias, train = bool(rng.random() < 0.7), bool(rng.random() < 0.6)
    bn_kw = dict(momentum=mom) if bn else {}
    if kind.startswith("Linear"):
        i, o = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        # (a batch of 2 normalises each feature to -1 and 1 whatever the input, so the exact
        # gradients below the norm are 0 and both engines' are rounding noise: 3 or more)
        x = (int(rng.integers(3 if bn and train else 2, 5)), i)
        mm = getattr(M, kind)(i, o, bias=bias, **bn_kw)
        tlayers = [torch.nn.Linear(i, o, bias=bias)]
        ours = "linear." if bn else ""  # (LinearRelu is a Linear itself)
        desc = f"{kind}({i}, {o}, bias={bias}"
    else:
        g = int(rng.integers(1, 3))
        cin, o = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
        k, s, p = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2))
        x = (int(rng.integers(2, 3)), cin, int(rng.integers(3, 6)), int(rng.integers(3, 6)))
        kw = dict(stride=s, padding=p, groups=g, bias=bias)
        transposed = "Transpose" in kind
        tcls = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
        mm, tlayers = getattr(M, kind)(cin, o, k, **kw, **bn_kw), [tcls(cin, o, k, **kw)]
        ours = ("conv_transpose2d." if transposed else "conv.") if bn else ""
        desc = f"{kind}({cin}, {o}, {k}, stride={s}, padding={p}, groups={g}, bias={bias}"
    names = {ours + "weight": "0.weight", ours + "bias": "0.bias"}
    if bn:  # upstream's momentum weighs the running value; torch's the batch
        tlayers.append((torch.nn.BatchNorm2d if len(x) == 4 else torch.nn.BatchNorm1d)(
            o, momentum=1 - mom))
        names.update({f"bn.{n}": f"1.{n}" for n in ("weight", "bias", "running_mean",
                                                    "running_var")})
    tm = torch.nn.Sequential(*tlayers, *([torch.nn.ReLU()] if relu else []))
    state = dict(list(mm.named_parameters()) + list(mm.named_buffers()))

    def to_mge(get):  # torch's shapes reshaped to ours; ours alone (LinearBn1d's unused
        out = {}      # ``bias``, upstream's too): zeros
        for n, t in state.items():
            try:
                out[n] = get(names[n]).reshape(t.shape)
            except KeyError:
                out[n] = np.zeros(t.shape, np.float32)
        return out
    desc += f"{f', momentum={mom}' if bn else ''}) {'train' if train else 'eval'} x{x}"
    bufs = ("bn.running_mean", "bn.running_var") if bn and train else ()
    return Check(desc, lambda: compare(desc, mm, tm, rng, _steps(rng, x, 2), to_mge,
                                       train=train, buffers=bufs, tol=(5e-4, 5e-4)))


# ----- thin layers over fuzzed functions: their arguments and defaults reach the function -----

class _TorchFn(torch.nn.Module):
    """A torch function as a module (``compare`` takes modules), with optional parameters."""

    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for n, v in params.items():
            setattr(self, n, torch.nn.Parameter(torch.tensor(v)))

    def forward(self, *xs):
        return self.fn(self, *xs)


def _upstream_softmax_axis(ndim):  # upstream's axis=None: 0 for 0-, 1- and 3-d inputs, else 1
    return 0 if ndim in (0, 1, 3) else 1


def _sliding_window_args(rng):
    return [tuple(int(v) for v in rng.integers(lo, hi, size=2))
            for lo, hi in ((1, 3), (0, 2), (1, 3), (1, 3))]  # kernel, padding, stride, dilation


def _sliding_window_layer(rng, transpose):
    k, p, s, d = _sliding_window_args(rng)
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    size = tuple(int(d_ * (k_ - 1)) + 1 - 2 * p_ + int(rng.integers(0, 4))
                 for k_, p_, d_ in zip(k, p, d))
    size = tuple(max(v, 1) for v in size)
    out = tuple((i + 2 * p_ - d_ * (k_ - 1) - 1) // s_ + 1 for i, k_, p_, s_, d_ in
                zip(size, k, p, s, d))
    args = f"kernel_size={k}, padding={p}, stride={s}, dilation={d}"
    if not transpose:
        def t(_, x):
            cols = torch.nn.functional.unfold(x, k, d, p, s)
            return cols.reshape(n, c, *k, *out).permute(0, 1, 4, 5, 2, 3)
        return (f"SlidingWindow({args})", M.SlidingWindow(k, p, s, d), t, (n, c) + size)

    def tt(_, w):
        cols = w.permute(0, 1, 4, 5, 2, 3).reshape(n, c * k[0] * k[1], out[0] * out[1])
        return torch.nn.functional.fold(cols, size, k, d, p, s)
    return (f"SlidingWindowTranspose({size}, {args})", M.SlidingWindowTranspose(size, k, p, s, d),
            tt, (n, c) + out + k)


def _adaptive_layer(rng, kind):
    shp = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) + tuple(
        int(v) for v in rng.integers(1, 8, size=2))
    o = tuple(int(rng.integers(1, n + 1)) for n in shp[2:])
    oshp = o[0] if o[0] == o[1] and rng.random() < 0.5 else o
    # upstream's windows, not torch's adaptive bins (see ops_nn's adaptive_avg_pool2d)
    stride = tuple(n // m for n, m in zip(shp[2:], o))
    kernel = tuple(n - (m - 1) * st for n, m, st in zip(shp[2:], o, stride))
    pool = getattr(torch.nn.functional, "avg_pool2d" if kind == "Avg" else "max_pool2d")
    return (f"Adaptive{kind}Pool2d({oshp})", getattr(M, f"Adaptive{kind}Pool2d")(oshp),
            lambda _, x: pool(x, kernel, stride), shp)


def _general_norm_layer(rng):
    shp, axes, arg = normalized_axes(rng)
    nd = len(shp)
    ns = [shp[a] for a in axes]
    eps = float(pick(rng, [1e-5, 1e-3, 0.1]))
    affine = bool(rng.random() < 0.7)
    if len(arg) == 1 and rng.random() < 0.5:
        arg, ns = arg[0], ns[0]  # (ints for one axis, as upstream takes them)
    mm = M.GeneralNorm(ns if affine or rng.random() < 0.5 else None, arg, eps, affine)
    wshape = [shp[i] if i in axes else 1 for i in range(nd)]

    def t(m, x):
        y = (x - x.mean(axes, keepdim=True)) / torch.sqrt(
            x.var(axes, correction=0, keepdim=True) + eps)
        return y * m.weight.reshape(wshape) + m.bias.reshape(wshape) if affine else y
    wb = [shp[a] for a in axes]
    params = dict(weight=np.ones(wb, np.float32), bias=np.zeros(wb, np.float32)) if affine \
        else {}
    # a spread inside each normalized group (see ops_nn2's general_norm)
    spread = np.expand_dims(rng.permutation(int(np.prod(wb))).reshape(wb).astype(np.float32),
                            [i for i in range(nd) if i not in axes])
    return (f"GeneralNorm({ns}, {arg}, eps={eps}, affine={affine})", mm, t, shp, params,
            spread)


_PLAIN = {"ReLU": torch.relu, "Sigmoid": torch.sigmoid, "SiLU": torch.nn.functional.silu,
          "GELU": torch.nn.functional.gelu}


@op("thin_layers")
def _thin_layer(rng):
    kind = pick(rng, ["plain", "LeakyReLU", "Softmax", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
                      "LocalResponseNorm", "PixelShuffle", "SlidingWindow",
                      "SlidingWindowTranspose", "GeneralNorm", "Concat"])
    params, spread, call, distinct = {}, 0.0, None, False
    if kind == "plain":
        name = pick(rng, sorted(_PLAIN))
        fn = _PLAIN[name]
        desc, mm, t, x = f"{name}()", getattr(M, name)(), lambda _, a: fn(a), shape(rng, 0, 4)
    elif kind == "LeakyReLU":
        slope = None if rng.random() < 0.3 else float(pick(rng, [0.2, -0.5, 1.5]))
        mm = M.LeakyReLU() if slope is None else M.LeakyReLU(slope)
        s = 0.01 if slope is None else slope  # upstream's default
        desc, t, x = f"LeakyReLU({slope or ''})", (
            lambda _, a: torch.nn.functional.leaky_relu(a, s)), shape(rng, 0, 4)
    elif kind == "Softmax":
        x = shape(rng, 1, 4, zero=False)
        axis = None if rng.random() < 0.4 else int(rng.integers(-len(x), len(x)))
        dim = _upstream_softmax_axis(len(x)) if axis is None else axis
        desc, mm, t = f"Softmax(axis={axis})", M.Softmax(axis), lambda _, a: torch.softmax(a,
                                                                                          dim)
    elif kind.startswith("Adaptive"):
        desc, mm, t, x = _adaptive_layer(rng, kind[8:11])
        distinct = kind == "AdaptiveMaxPool2d"
    elif kind == "LocalResponseNorm":
        x = (int(rng.integers(1, 3)), int(rng.integers(1, 7)), int(rng.integers(1, 4)),
             int(rng.integers(1, 4)))
        if rng.random() < 0.3:  # upstream's defaults: kernel_size 5, k 2, alpha 1e-4, beta 0.75
            mm, (size, k, alpha, beta) = M.LocalResponseNorm(), (5, 2.0, 1e-4, 0.75)
        else:
            size, k, alpha, beta = (pick(rng, [1, 3, 5]), pick(rng, [2.0, 0.5]),
                                    pick(rng, [1e-4, 0.1]), pick(rng, [0.75, 1.0]))
            mm = M.LocalResponseNorm(size, k, alpha, beta)
        desc = f"LocalResponseNorm({size}, k={k}, alpha={alpha}, beta={beta})"
        # upstream's alpha multiplies the plain sum of squares; torch's divides it by the window
        t = lambda _, a: torch.nn.functional.local_response_norm(  # noqa: E731
            a.contiguous(), size, alpha * size, beta, k)
    elif kind == "PixelShuffle":
        r = int(rng.integers(1, 4))
        x = shape(rng, 0, 2, zero=False) + (r * r * int(rng.integers(1, 3)),
                                            int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        desc, mm, t = f"PixelShuffle({r})", M.PixelShuffle(r), (
            # (torch's CPU kernel takes contiguous and channels-last layouts only: seed 110744)
            lambda _, a: torch.nn.functional.pixel_shuffle(a.contiguous(), r))
    elif kind.startswith("SlidingWindow"):
        desc, mm, t, x = _sliding_window_layer(rng, kind.endswith("Transpose"))
    elif kind == "GeneralNorm":
        desc, mm, t, x, params, spread = _general_norm_layer(rng)
    else:
        n, axis = int(rng.integers(1, 4)), int(rng.integers(0, 2))
        x = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        desc, mm, t = f"Concat() of {n} on axis {axis}", M.Concat(), (
            lambda _, *xs: torch.cat(xs, axis))
        call = lambda m, *xs: m(list(xs), axis) if isinstance(m, M.Module) else m(*xs)  # noqa
        steps = [[values(rng, x, "float32") for _ in range(n)]]
    tm = _TorchFn(t, **params)
    if kind != "Concat":
        steps = _steps(rng, x, 1 if distinct else None)
        for step in steps:  # distinct values: no ties that the frameworks break differently
            step[0] = (rng.permutation(step[0].size).reshape(x) / 7).astype(np.float32) \
                if distinct else (step[0] + spread).astype(np.float32)
    desc += f" x{x}"
    return Check(desc, lambda: compare(desc, mm, tm, rng, steps, same_names(mm), call=call))
