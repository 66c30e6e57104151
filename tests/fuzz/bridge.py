"""Offline fuzzing of the bridge: ``python -m tests.fuzz.bridge --seeds 200 [--start S]`` draws
hybrid networks, torch blocks inside `PyTorchModule` wrappers with megengine layers between them,
trains each a few steps with a megengine optimizer and checks every loss, parameter and buffer
against the same network in pure torch trained by ``torch.optim`` (the oracle), in float64 to
1e-7 relative; the CI slice is
`test_bridge_fuzz.py`. Run it from the repository root with the checkout on PYTHONPATH.

What a draw combines: tied weights inside a block, one block in two wrappers or one wrapper called
twice, a megengine layer that uses a wrapped parameter, batch norm buffers, frozen parameters,
outputs in a tuple, list or dict, a non-contiguous output, a reversed (negative-stride) input,
tensors inside list and dict arguments and keyword tensors; SGD (momentum, nesterov, weight
decay), Adam or AdamW, gradient clipping, a traced step (``symbolic`` either way), and halfway a
save and load through ``mge.save`` (with the optimizer's state) or a ``copy.deepcopy``, after
which the copy trains on; at the end, eval-mode outputs."""
import argparse
import copy
import io
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as tF

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.device import canonical_device
from megengine.jit import trace
from megengine.module.pytorch import PyTorchModule

# Everything in float64: Adam divides a step by the gradient's own size, so in float32 the
# rounding of a small gradient (a sum over a batch that batch norm centres) moves steps by up to
# ~1e-3 lr, differently on either side; in float64 a lost or doubled update stands out by orders
DTYPE = "float64"
RTOL, ATOL = 1e-7, 1e-9
CLASSES = 5


# ----- torch blocks (module level, so that whole networks pickle) -----

class Mlp(nn.Module):
    def __init__(self, d_in, d_out, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(d_in, d_out), nn.Linear(d_out, d_out), act

    def forward(self, x):
        return self.fc2(getattr(torch, self.act)(self.fc1(x)))


class BnBlock(nn.Module):
    """tanh before the batch norm: a bias straight before it would get a gradient that is zero
    up to rounding, which Adam turns into steps of +-lr that differ from side to side."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc, self.bn = nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out)

    def forward(self, x):
        return self.bn(torch.tanh(self.fc(x)))


class LnResidual(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.ln(x))


class Tied(nn.Module):
    """``dec.weight is enc.weight``: one parameter, two uses."""

    def __init__(self, d):
        super().__init__()
        self.enc, self.dec = nn.Linear(d, d), nn.Linear(d, d)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


class Frozen(nn.Module):
    """A frozen weight and a trainable bias and scale."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.fc.weight.requires_grad_(False)
        self.scale = nn.Parameter(torch.rand(d_out) + 0.5)

    def forward(self, x):
        return self.fc(x) * self.scale


class TwoOut(nn.Module):
    """Two outputs in a tuple, list or dict; the caller adds them."""

    def __init__(self, d, container):
        super().__init__()
        self.fc, self.gate, self.container = nn.Linear(d, d), nn.Parameter(torch.randn(d)), container

    def forward(self, x):
        a, b = self.fc(x), torch.sigmoid(x * self.gate)
        return {"tuple": (a, b), "list": [a, b], "dict": {"a": a, "b": b}}[self.container]


class Transposed(nn.Module):
    """Returns a transposed view (non-contiguous); the caller transposes back."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.fc(x).t()


class Packed(nn.Module):
    """Tensors inside a list or dict argument and a keyword tensor and float."""

    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, pair, *, shift, scale):
        x, y = (pair["x"], pair["y"]) if isinstance(pair, dict) else pair
        return self.fc(x) * scale + torch.tanh(y) + shift


# ----- drawing a network -----

def draw(seed):
    """A plan: (blocks, mge linear shapes, stages, training options), all plain data."""
    rng = np.random.default_rng(seed)
    d = int(rng.integers(3, 9))
    d_in, blocks, lins, stages = d, [], [], []

    def new_block(kind, *args):
        blocks.append((kind, args))
        return len(blocks) - 1

    square = []  # blocks mapping d -> d: (width, block, wrapper, the stage that calls it)
    wrappers = []  # the block each wrapper wraps
    for _ in range(int(rng.integers(2, 6))):
        choice = rng.choice(["torch", "torch", "torch", "reuse", "mge", "mge_param", "reverse"])
        fits = [s for s in square if s[0] == d]
        if choice == "reuse" and fits:
            _, b, w, stage = fits[int(rng.integers(len(fits)))]
            if rng.random() < 0.5:  # one block in a second wrapper
                wrappers.append(b)
                w = len(wrappers) - 1
            stages.append(stage[:1] + (w,) + stage[2:])
            continue
        tied = [w for _, b, w, _ in fits if blocks[b][0] == "tied"]
        if choice == "mge_param" and tied:  # a megengine layer using a wrapped weight
            stages.append(("mge_param", tied[0], "enc.weight"))
            continue
        if choice == "reverse":
            stages.append(("reverse",))
            continue
        if choice == "mge":
            out = int(rng.integers(3, 9))
            lins.append((d, out))
            stages.append(("mge", len(lins) - 1, str(rng.choice(["relu", "tanh", "none"]))))
            d = out
            continue
        kind = str(rng.choice(["mlp", "bn", "ln", "tied", "frozen", "two_out", "transposed",
                               "packed"]))
        out = d if kind in ("ln", "tied", "two_out", "packed") else int(rng.integers(3, 9))
        args = {"mlp": (d, out, str(rng.choice(["relu", "tanh", "sigmoid"]))),
                "bn": (d, out), "ln": (d,), "tied": (d,), "frozen": (d, out),
                "two_out": (d, str(rng.choice(["tuple", "list", "dict"]))),
                "transposed": (d, out), "packed": (d,)}[kind]
        b = new_block(kind, *args)
        wrappers.append(b)
        extra = {"packed": str(rng.choice(["list", "dict"]))}.get(kind)
        stages.append(("call", len(wrappers) - 1, kind) + ((extra,) if extra else ()))
        if out == d:
            square.append((d, b, len(wrappers) - 1, stages[-1]))
        d = out
    lins.append((d, CLASSES))
    stages.append(("mge", len(lins) - 1, "none"))
    opt = str(rng.choice(["sgd", "sgd_nesterov", "adam", "adamw"]))
    options = dict(
        d_in=d_in, batch=int(rng.integers(4, 9)), steps=int(rng.integers(3, 6)), opt=opt,
        lr=float(rng.choice([0.01, 0.05])), weight_decay=float(rng.choice([0.0, 0.01])),
        clip=float(rng.choice([0.0, 0.0, 0.5])),
        trace=str(rng.choice(["none", "none", "eager", "symbolic"])),
        midway=str(rng.choice(["none", "none", "save", "deepcopy"])),
    )
    return blocks, wrappers, lins, stages, options


def _make_block(kind, args):
    return {"mlp": Mlp, "bn": BnBlock, "ln": LnResidual, "tied": Tied, "frozen": Frozen,
            "two_out": TwoOut, "transposed": Transposed, "packed": Packed}[kind](*args)


class Hybrid(M.Module):
    """The megengine network of a plan: wrappers of the torch blocks and megengine layers."""

    def __init__(self, torch_blocks, wrappers, lins, stages):
        super().__init__()
        self.wraps = [PyTorchModule(torch_blocks[b],
                                    output_cnt=2 if torch_blocks[b].__class__ is TwoOut else 1)
                      for b in wrappers]
        self.lins = [M.Linear(i, o) for i, o in lins]
        for lin in self.lins:
            lin.weight = mge.Parameter(lin.weight.numpy(), dtype=DTYPE)
            lin.bias = mge.Parameter(lin.bias.numpy(), dtype=DTYPE)
        self.stages = stages

    def forward(self, x):
        for stage in self.stages:
            if stage[0] == "reverse":
                x = x[:, ::-1]
            elif stage[0] == "mge":
                x = self.lins[stage[1]](x)
                x = {"relu": F.relu, "tanh": F.tanh, "none": lambda v: v}[stage[2]](x)
            elif stage[0] == "mge_param":
                x = F.linear(x, self.wraps[stage[1]].get_param_by_name(stage[2]))
            else:
                x = _call(self.wraps[stage[1]], stage, x, transpose=lambda v: v.T)
        return x


class Twin(nn.Module):
    """The same network in pure torch."""

    def __init__(self, torch_blocks, wrappers, lins, stages):
        super().__init__()
        self.blocks, self.wrappers, self.stages = torch_blocks, wrappers, stages
        self.lins = nn.ModuleList(nn.Linear(i, o) for i, o in lins)

    def forward(self, x):
        for stage in self.stages:
            if stage[0] == "reverse":
                x = torch.flip(x, [1])
            elif stage[0] == "mge":
                x = self.lins[stage[1]](x)
                x = {"relu": torch.relu, "tanh": torch.tanh, "none": lambda v: v}[stage[2]](x)
            elif stage[0] == "mge_param":
                x = tF.linear(x, self.blocks[self.wrappers[stage[1]]].get_parameter(stage[2]))
            else:
                x = _call(self.blocks[self.wrappers[stage[1]]], stage, x, transpose=lambda v: v.t())
        return x


def _call(module, stage, x, transpose):
    """One call stage, the same code on either side (``module``: a wrapper or a torch block)."""
    kind = stage[2]
    if kind == "two_out":
        out = module(x)
        a, b = (out["a"], out["b"]) if isinstance(out, dict) else out
        return a + b
    if kind == "transposed":
        return transpose(module(x))
    if kind == "packed":
        pair = {"x": x, "y": x * 0.5} if stage[3] == "dict" else [x, x * 0.5]
        return module(pair, shift=x * 0.25, scale=1.5)
    return module(x)


def _optimizers(opts):
    kw = dict(lr=opts["lr"], weight_decay=opts["weight_decay"])
    return {
        "sgd": (lambda ps: optim.SGD(ps, momentum=0.9, **kw),
                lambda ps: torch.optim.SGD(ps, momentum=0.9, **kw)),
        "sgd_nesterov": (lambda ps: optim.SGD(ps, momentum=0.9, nesterov=True, **kw),
                         lambda ps: torch.optim.SGD(ps, momentum=0.9, nesterov=True, **kw)),
        "adam": (lambda ps: optim.Adam(ps, **kw), lambda ps: torch.optim.Adam(ps, **kw)),
        "adamw": (lambda ps: optim.AdamW(ps, **kw), lambda ps: torch.optim.AdamW(ps, **kw)),
    }[opts["opt"]]


class BridgeMismatch(AssertionError):
    pass


def build(seed):
    """(hybrid, twin, plan) of program ``seed``, with equal initial weights."""
    blocks, wrappers, lins, stages, opts = plan = draw(seed)
    torch.manual_seed(seed)
    torch_blocks = [_make_block(kind, args).to(getattr(torch, DTYPE)) for kind, args in blocks]
    twin_blocks = copy.deepcopy(nn.ModuleList(torch_blocks))  # (ties kept, memory separate)
    net = Hybrid(torch_blocks, wrappers, lins, stages)
    twin = Twin(twin_blocks, wrappers, lins, stages).to(_torch_device(), getattr(torch, DTYPE))
    with torch.no_grad():
        for lin, tlin in zip(net.lins, twin.lins):
            tlin.weight.copy_(_to_torch(lin.weight.numpy()))
            tlin.bias.copy_(_to_torch(lin.bias.numpy()))
    return net, twin, plan


def _torch_device():
    """The twin's torch device: the one the wrappers put their modules on (the default
    device's: ``cuda:N`` for ``gpuN``)."""
    dev = canonical_device(None)
    return "cuda:" + dev[3:] if dev.startswith("gpu") else "cpu"


def _to_torch(array):
    return torch.from_numpy(array).to(_torch_device())


def _host(t):
    return t.detach().cpu().numpy()


def _compare(what, got, want):
    try:
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    except AssertionError as e:
        raise BridgeMismatch(f"{what}: {e}") from None


def _compare_state(net, twin, wrappers, when):
    for w, wrap in enumerate(net.wraps):
        block = twin.blocks[wrappers[w]]
        mine = dict(wrap.torch_module.state_dict(keep_vars=True))
        for name, value in block.state_dict(keep_vars=True).items():
            _compare(f"{when}: wrapper {w} {name}", _host(mine[name]), _host(value))
            if name in dict(wrap.named_parameters()) or name in dict(wrap.named_buffers()):
                _compare(f"{when}: wrapper {w} {name} (megengine's view)",
                         _named(wrap, name).numpy(), _host(value))
    for k, (lin, tlin) in enumerate(zip(net.lins, twin.lins)):
        _compare(f"{when}: megengine linear {k} weight", lin.weight.numpy(),
                 _host(tlin.weight))
        _compare(f"{when}: megengine linear {k} bias", lin.bias.numpy(),
                 _host(tlin.bias))


def _named(wrap, name):
    return dict(list(wrap.named_parameters()) + list(wrap.named_buffers()))[name]


def _mge_step(net, make_opt, opts):
    params = list(net.parameters())
    gm, opt = GradManager().attach(params), make_opt(params)

    def step(x, y):
        with gm:
            loss = F.nn.cross_entropy(net(x), y)
            gm.backward(loss)
        if opts["clip"]:
            optim.clip_grad_norm(params, opts["clip"])
        opt.step()
        opt.clear_grad()
        return loss

    if opts["trace"] != "none":
        step = trace(step, symbolic=opts["trace"] == "symbolic")
    return step, opt


def check(seed):
    """Train program ``seed`` both ways; raises BridgeMismatch on the first difference."""
    net, twin, (blocks, wrappers, lins, stages, opts) = build(seed)
    make_opt, make_topt = _optimizers(opts)
    step, opt = _mge_step(net, make_opt, opts)
    topt = make_topt([p for p in twin.parameters()])
    _compare_state(net, twin, wrappers, "initial state")
    rng = np.random.default_rng(seed + 1)
    for k in range(opts["steps"] * 2):
        x = rng.standard_normal((opts["batch"], opts["d_in"])).astype(DTYPE)
        y = rng.integers(0, CLASSES, opts["batch"]).astype("int32")
        loss = step(mge.tensor(x, dtype=DTYPE), mge.tensor(y))
        topt.zero_grad()
        tloss = tF.cross_entropy(twin(_to_torch(x)), _to_torch(y).long())
        tloss.backward()
        if opts["clip"]:
            torch.nn.utils.clip_grad_norm_(twin.parameters(), opts["clip"])
        topt.step()
        _compare(f"step {k} loss", loss.numpy(), tloss.item())
        _compare_state(net, twin, wrappers, f"after step {k}")
        if k == opts["steps"] - 1 and opts["midway"] != "none":
            net, step, opt = _continue_on_a_copy(net, opt, make_opt, opts)
    net.eval()
    twin.eval()
    x = rng.standard_normal((3, opts["d_in"])).astype(DTYPE)
    with torch.no_grad():
        _compare("eval output", net(mge.tensor(x, dtype=DTYPE)).numpy(), _host(twin(_to_torch(x))))
    return opts


def _continue_on_a_copy(net, opt, make_opt, opts):
    """Halfway: the network saved and loaded (or deep-copied) with the optimizer's state; the
    copy trains on."""
    if opts["midway"] == "save":
        buffer = io.BytesIO()
        mge.save({"net": net, "opt": opt.state_dict()}, buffer)
        buffer.seek(0)
        loaded = mge.load(buffer)
        new, state = loaded["net"], loaded["opt"]
    else:
        new, state = copy.deepcopy(net), copy.deepcopy(opt.state_dict())
    step, new_opt = _mge_step(new, make_opt, opts)
    new_opt.load_state_dict(state)
    return new, step, new_opt


def fuzz(seeds, start=0):
    bad = 0
    for seed in range(start, start + seeds):
        try:
            check(seed)
        except BridgeMismatch as e:
            bad += 1
            print(f"=== network {seed}: {e}\n--- plan ---\n{draw(seed)}", flush=True)
    return bad


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.bridge", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="networks (default 100)")
    p.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    a = p.parse_args(argv)
    t0 = time.time()
    bad = fuzz(a.seeds, a.start)
    print(f"{a.seeds} networks ({bad} failing) in {time.time() - t0:.0f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
