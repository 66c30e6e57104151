"""Training-step time of a transformer encoder on this engine against the same network in PyTorch, same process.

A pre-norm ViT/BERT-style encoder, CPU, one thread, random inputs fixed in advance:

    x (batch, seq, d_model) -> blocks x [x + attention(LayerNorm(x)), x + FFN(LayerNorm(x))]
    -> mean over seq -> Linear(d_model, 10) -> cross entropy

with FFN = Linear(d, 4d), GELU (exact, erf), Linear(4d, d), and no dropout (p = 0: the two
frameworks cannot draw the same masks). Two attention variants:

* ``encoder``: attention written out: ``M.Linear(d, 3d)`` for q, k, v, heads by reshape and
  transpose, ``F.matmul`` for the scores and the weighted sum, ``F.softmax``, ``M.Linear(d, d)``
  out; Adam. Torch: the same with ``nn.Linear``, ``@`` and ``torch.softmax``.
* ``mha``: ``M.MultiHeadAttention`` (upstream's packed projection weights) against torch's
  ``nn.MultiheadAttention(batch_first=True)`` with the same weights; AdamW (weight decay 0.01).

at two sizes: ``large`` (d_model 256, 8 heads, seq 64, batch 16, 2 blocks: the gemms dominate)
and ``small`` (d_model 128, 4 heads, seq 32, batch 8, 2 blocks: per-op overhead matters).

Before timing, the torch network starts from megengine's initial weights and both take 8 steps on
the same batches: the losses must agree (relative difference < 1e-3) and fall, else the script
exits with an error. Then ``--repeats`` rounds of ``--steps`` steps per side (six times as many
at the small size, whose steps are ~10x shorter), the two sides taking
turns step by step (who goes first alternating); a round's figure is the median of megengine step /
torch step over adjacent pairs (``_timing.paired_ratio``), and the verdict is the median over
rounds, with quartiles and range (aims: ``large`` <= 1.05x, ``small`` <= 1.15x). The median ms per
step of each side is printed too. All rounds run in this one process, which can carry a bias of
its own (see benchmarks/README.md, "How the timing is done").

    python benchmarks/bench_transformer.py [--steps N] [--repeats R] [--quick]
        [--size large|small] [--variant encoder|mha]

Thread counts are pinned to 1 (OMP/OPENBLAS/MKL_NUM_THREADS, set below with setdefault before
numpy is imported, and torch.set_num_threads(1)), so both frameworks use one core.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load their BLAS: one thread each

import statistics  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as tnn  # noqa: E402
import torch.nn.functional as TF  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
import megengine.optimizer as optim  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

torch.set_num_threads(1)

SIZES = {  # d_model, heads, seq, batch, blocks
    "large": dict(d=256, heads=8, seq=64, batch=16, blocks=2),
    "small": dict(d=128, heads=4, seq=32, batch=8, blocks=2),
}
AIMS = {"large": 1.05, "small": 1.15}
CLASSES = 10
N_BATCHES = 4  # distinct pre-made batches, cycled
CHECK_STEPS = 8
LR, WEIGHT_DECAY = 3e-4, 0.01  # 1e-3 made the loss jump at step 2 (8 steps did not fall)


# ----- the encoder in megengine ------------------------------------------------------------------
class MgeAttention(M.Module):
    """Self-attention written out: one qkv projection, per-head scores, softmax, out projection."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = M.Linear(d, 3 * d)
        self.out = M.Linear(d, d)

    def forward(self, x):
        b, length, d = x.shape
        h = self.qkv(x).reshape(b, length, 3, self.heads, d // self.heads).transpose(2, 0, 3, 1, 4)
        q, k, v = h[0], h[1], h[2]
        scores = F.matmul(q, k.transpose(0, 1, 3, 2)) * float(d // self.heads) ** -0.5
        a = F.matmul(F.softmax(scores, axis=-1), v)
        return self.out(a.transpose(0, 2, 1, 3).reshape(b, length, d))


class MgeMHA(M.Module):
    """Upstream's `M.MultiHeadAttention` as self-attention."""

    def __init__(self, d, heads):
        super().__init__()
        self.mha = M.MultiHeadAttention(d, heads)

    def forward(self, x):
        return self.mha(x, x, x)[0]


class MgeBlock(M.Module):
    def __init__(self, d, heads, attention):
        super().__init__()
        self.ln1 = M.LayerNorm(d)
        self.attn = attention(d, heads)
        self.ln2 = M.LayerNorm(d)
        self.fc1 = M.Linear(d, 4 * d)
        self.fc2 = M.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class MgeEncoder(M.Module):
    def __init__(self, d, heads, blocks, attention):
        super().__init__()
        self.blocks = [MgeBlock(d, heads, attention) for _ in range(blocks)]
        self.head = M.Linear(d, CLASSES)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


# ----- the same encoder in torch ------------------------------------------------------------------
class TorchAttention(tnn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = tnn.Linear(d, 3 * d)
        self.out = tnn.Linear(d, d)

    def forward(self, x):
        b, length, d = x.shape
        h = self.qkv(x).reshape(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = h[0], h[1], h[2]
        scores = (q @ k.transpose(-1, -2)) * float(d // self.heads) ** -0.5
        a = torch.softmax(scores, -1) @ v
        return self.out(a.permute(0, 2, 1, 3).reshape(b, length, d))


class TorchMHA(tnn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.mha = tnn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class TorchBlock(tnn.Module):
    def __init__(self, d, heads, attention):
        super().__init__()
        self.ln1 = tnn.LayerNorm(d)
        self.attn = attention(d, heads)
        self.ln2 = tnn.LayerNorm(d)
        self.fc1 = tnn.Linear(d, 4 * d)
        self.fc2 = tnn.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(TF.gelu(self.fc1(self.ln2(x))))


class TorchEncoder(tnn.Module):
    def __init__(self, d, heads, blocks, attention):
        super().__init__()
        self.blocks = tnn.ModuleList([TorchBlock(d, heads, attention) for _ in range(blocks)])
        self.head = tnn.Linear(d, CLASSES)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


VARIANTS = {  # name: (megengine attention, torch attention, megengine optimizer, torch optimizer)
    "encoder": (MgeAttention, TorchAttention,
                lambda params: optim.Adam(params, LR), lambda params: torch.optim.Adam(params, LR)),
    "mha": (MgeMHA, TorchMHA,
            lambda params: optim.AdamW(params, LR, weight_decay=WEIGHT_DECAY),
            lambda params: torch.optim.AdamW(params, LR, weight_decay=WEIGHT_DECAY)),
}


def copy_weights(mge_net, torch_net, variant):
    """torch_net starts from mge_net's initial weights. The names match (blocks.0.ln1.weight, ...)
    except the packed projections of ``M.MultiHeadAttention`` (weights (in, out), used as
    ``x @ W``), which become torch's in_proj (q, k, v stacked, (out, in)) and out_proj."""
    ours = {name: p.numpy() for name, p in mge_net.named_parameters()}
    tp = dict(torch_net.named_parameters())
    with torch.no_grad():
        if variant == "mha":
            for i, block in enumerate(mge_net.blocks):
                mha = block.attn.mha
                d = mha.embed_dim
                flat = ours.pop(f"blocks.{i}.attn.mha.io_weight_bias").reshape(-1)
                wq, wk, wv, wo = (flat[j * d * d:(j + 1) * d * d].reshape(d, d) for j in range(4))
                bq, bk, bv, bo = (flat[4 * d * d + j * d:4 * d * d + (j + 1) * d] for j in range(4))
                prefix = f"blocks.{i}.attn.mha."
                tp.pop(prefix + "in_proj_weight").copy_(torch.from_numpy(np.concatenate([wq.T, wk.T, wv.T])))
                tp.pop(prefix + "in_proj_bias").copy_(torch.from_numpy(np.concatenate([bq, bk, bv])))
                tp.pop(prefix + "out_proj.weight").copy_(torch.from_numpy(np.ascontiguousarray(wo.T)))
                tp.pop(prefix + "out_proj.bias").copy_(torch.from_numpy(bo))
        if set(ours) != set(tp):
            raise SystemExit(f"bench_transformer: parameter names differ: {sorted(set(ours) ^ set(tp))}")
        for name, p in tp.items():
            p.copy_(torch.from_numpy(ours[name].reshape(p.shape)))


def make_data(size, seed=0):
    """Batches fixed in advance; each class adds its own pattern to the noise, so that the loss
    falls over the check's few steps."""
    s = SIZES[size]
    rng = np.random.RandomState(seed)
    patterns = rng.randn(CLASSES, s["seq"], s["d"]).astype("float32")
    ys = [rng.randint(0, CLASSES, s["batch"]).astype("int32") for _ in range(N_BATCHES)]
    xs = [(rng.randn(s["batch"], s["seq"], s["d"]) + 0.5 * patterns[y]).astype("float32")
          for y in ys]
    return xs, ys


def steppers(size, variant, data):
    """(megengine step, torch step): zero-argument callables, each running its next training step
    and returning the loss as a float; both networks start from the same weights."""
    s = SIZES[size]
    mge_attn, torch_attn, mge_opt, torch_opt = VARIANTS[variant]
    mge.random.seed(0)
    net = MgeEncoder(s["d"], s["heads"], s["blocks"], mge_attn)
    tnet = TorchEncoder(s["d"], s["heads"], s["blocks"], torch_attn)
    copy_weights(net, tnet, variant)
    mge_train = _timing.mge_training_step(net, mge_opt(net.parameters()))
    torch_train = _timing.torch_training_step(tnet, torch_opt(tnet.parameters()))
    mb = [(mge.tensor(x), mge.tensor(y, dtype="int32")) for x, y in zip(*data)]
    tb = [(torch.from_numpy(x), torch.from_numpy(y).long()) for x, y in zip(*data)]
    state = {"m": 0, "t": 0}

    def mge_step():
        x, y = mb[state["m"] % N_BATCHES]
        state["m"] += 1
        return float(mge_train(x, y).numpy())

    def torch_step():
        x, y = tb[state["t"] % N_BATCHES]
        state["t"] += 1
        return float(torch_train(x, y).detach())

    return mge_step, torch_step


def check_same_work(size, variant, data):
    mge_step, torch_step = steppers(size, variant, data)
    ml = [mge_step() for _ in range(CHECK_STEPS)]
    tl = [torch_step() for _ in range(CHECK_STEPS)]
    worst = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(ml, tl))
    same, falls = worst < 1e-3, ml[-1] < ml[0]
    print(f"  same work: megengine loss {ml[0]:.4f} -> {ml[-1]:.4f} over {CHECK_STEPS} steps, torch "
          f"{tl[0]:.4f} -> {tl[-1]:.4f}; largest relative difference {worst:.1e} "
          f"{'ok' if same and falls else 'MISMATCH' if not same else 'LOSS DOES NOT FALL'}")
    return same and falls


def run_case(size, variant, args):
    s = SIZES[size]
    print(f"{variant}, {size}: d_model {s['d']}, {s['heads']} heads, seq {s['seq']}, batch "
          f"{s['batch']}, {s['blocks']} blocks, {'Adam' if variant == 'encoder' else 'AdamW'}, "
          f"cross entropy:")
    data = make_data(size)
    ok = check_same_work(size, variant, data)
    steps = args.steps if size == "large" else args.steps * 6
    rounds = _timing.paired_rounds(*steppers(size, variant, data), steps, args.repeats)
    ratios = [r for r, _, _ in rounds]
    m_ms = statistics.median(t for _, mt, _ in rounds for t in mt) * 1e3
    t_ms = statistics.median(t for _, _, tt in rounds for t in tt) * 1e3
    print(f"  median step: megengine {m_ms:.2f} ms, torch {t_ms:.2f} ms ({steps} steps x "
          f"{args.repeats} rounds each)")
    print(f"  megengine / torch per round, adjacent steps paired: {_timing.describe_ratios(ratios)}"
          f"   {_timing.ratio_verdict(ratios, AIMS[size])}")
    _timing.flush()
    return ok


def main():
    def extra(parser):
        parser.add_argument("--size", choices=sorted(SIZES), action="append",
                            help="only this size (repeatable; default both)")
        parser.add_argument("--variant", choices=sorted(VARIANTS), action="append",
                            help="only this attention variant (repeatable; default both)")

    args = _timing.parse_args(__doc__, steps=10, repeats=7, quick_steps=2, quick_repeats=2,
                              extra=extra)
    print(_timing.machine_line())
    print(f"large: {args.steps} steps per round, small: {args.steps * 6}; {args.repeats} rounds; "
          f"3 warm-up steps; megengine and torch taking turns step by step")
    ok = True
    for variant in args.variant or ("encoder", "mha"):
        for size in args.size or ("large", "small"):
            ok &= run_case(size, variant, args)
    if not ok:
        _timing.flush()
        sys.exit("bench_transformer: megengine and torch disagree; the figures compare different work")


if __name__ == "__main__":
    main()
