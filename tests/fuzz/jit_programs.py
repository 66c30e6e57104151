"""Random small traced-program sources for the jit fuzzer: 3-15 steps of tensor code on an
(N, C, H, W) input, with the shape-dependent Python real programs have (sizes from ``x.shape``,
``F.zeros((n, c))``, ``x / n``, ``Tensor(x.shape)``, branches and loops on sizes), in-place
updates, Python scalars and layers with parameters. A program is Python source, so a failure
prints as a reproducer that can be pasted into a test. Blocks of `jit_dyn` add values whose shapes
data decides (masks, ``cond_take``, ``nms``) to most programs; blocks of writes
(`_write_steps`) make some programs write into a captured Parameter (``m.w``), into the argument
``x`` and into computed values, and read what they wrote; lines of `SORTS` (sort, topk, roll:
`_with_lines`) go into a third of the programs, lines of `LAYER_FNS` (activations, math,
normalisations, padding, vision ops) into two fifths."""
import linecache
import math

import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.core._trace_option import set_symbolic_shape

from . import jit_dyn
from .gen import pick

C_IN = 3
TRACE_SHAPE = (2, C_IN, 8, 8)
# every shape keeps H and W multiples of 8 (three 2x2 pools stay valid) and C fixed (the layers'
# weights fix it); the batch and the spatial sizes change, as a deployed model's inputs do
OTHER_SHAPES = [(3, C_IN, 8, 8), (1, C_IN, 8, 8), (2, C_IN, 16, 8), (2, C_IN, 8, 16)]


class _State:
    """What the generator knows of ``h`` at some line: its rank, its fixed channel/feature count
    (None when it depends on the input's sizes), how many 2x halvings H and W still allow."""

    def __init__(self):
        self.rank, self.c, self.hb, self.wb = 4, C_IN, 3, 3


class Program:
    """A drawn program: ``source`` defines ``prog(x, m)``; ``layers`` are (name, constructor
    source) of the modules in ``m``; ``symshape`` says that the code reads ``x.shape.numpy()``
    (it runs only where shapes are symbolic); ``dyn`` that it makes values whose shapes data
    decides (`jit_dyn`: its marks of their sizes' uses make the probe source the oracle runs)."""

    _count = 0

    def __init__(self, steps, layers, outputs, seed, symshape, train, dyn=False):
        self.steps, self.layers, self.outputs = list(steps), list(layers), outputs
        self.seed, self.symshape, self.train, self.dyn = seed, symshape, train, dyn

    @property
    def writes_state(self):
        """Whether the program writes into a Parameter of ``m`` (state that persists across
        calls: the oracle runs eager code on a copy of the traced call's state)."""
        return any(f"m.{STATE}" in s for s in self.steps)

    @property
    def reads_state_first(self):
        """Whether the program reads the captured value of ``m.w`` (its first step that uses
        ``m.w`` is no write that overwrites it whole, `STATE_OVERWRITES`): under
        capture_as_const such a read is compared with the captured value (a checked call, a
        replay), and a call changes what later calls read."""
        first = next((s for s in self.steps if f"m.{STATE}" in s), None)
        return first is not None and first not in STATE_OVERWRITES

    @property
    def source(self):
        return jit_dyn.plain(self._marked())

    @property
    def probe_source(self):
        return jit_dyn.probed(self._marked())

    def _marked(self):
        lines = ["def prog(x, m):", "    h = x"]
        for s in self.steps:
            lines += ["    " + ln for ln in s.split("\n")]
        lines.append("    return " + self.outputs)
        return "\n".join(lines) + "\n"

    def layers_source(self):
        return "\n".join(f"m.{n} = {src}" for n, src in self.layers)

    def __str__(self):
        kind = "training step" if self.train else "inference"
        head = (f"# seed {self.seed}, {kind}{', needs symbolic shapes' if self.symshape else ''}"
                f"{', shapes that data decides' if self.dyn else ''}"
                f"{', writes its state' if self.writes_state else ''}")
        return "\n".join([head, self.layers_source(), self.source])

    def build(self):
        """(prog, m): the function (compiled under a file name linecache knows, so guards can
        name their source line) and a fresh module tree with seeded weights."""
        Program._count += 1
        fname = f"<jitfuzz-{self.seed}-{Program._count}>"
        src = self.source
        linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)
        ns = {"math": math, "mge": mge, "F": F, "M": M, "Tensor": mge.Tensor, "np": np}
        exec(compile(src, fname, "exec"), ns)  # noqa: S102 (our own generated test code)
        prog = ns["prog"]
        # the oracle's copy logs the uses of sizes that data decides (see `jit_dyn.Probe`)
        prog.probe = jit_dyn.Probe()
        pns = dict(ns, **prog.probe.names())
        exec(compile(self.probe_source, fname + "-probe", "exec"), pns)  # noqa: S102
        prog.eager = pns["prog"]
        m = M.Module()
        for name, ctor in self.layers:
            setattr(m, name, eval(ctor, ns))  # noqa: S307
        rng = np.random.default_rng(self.seed)
        for p in m.parameters():
            p._reset(mge.tensor(rng.uniform(-0.5, 0.5, p.shape).astype("float32")))
        if not self.train:
            m.eval()
        return prog, m

    def eager(self, prog, m, x):
        """The oracle: ``prog`` run eagerly (under symbolic shapes where its code needs them);
        a program's probe copy is run instead (``prog.probe`` says what it saw: reset here)."""
        old = set_symbolic_shape(True) if self.symshape else None
        if hasattr(prog, "probe"):
            prog.probe.reset()
            prog = prog.eager
        try:
            return prog(x, m)
        finally:
            if self.symshape:
                set_symbolic_shape(old)


# ----- steps: each returns source lines (or None when it does not fit the state) -----

def _unary(rng, st, L):
    return "h = " + pick(rng, ["F.relu(h)", "F.tanh(h)", "F.sigmoid(h) * 2.0 - 0.5",
                               "F.abs(h) + 0.25", "F.exp(h * 0.1)", "h * 0.5 + 1.0",
                               "F.log(F.exp(h) + 1.0)", "F.maximum(h, 0.1)", "-h",
                               # what opt_level >= 1 rewrites (x - x -> 0 must keep x's shape)
                               "h + (h - h)", "h * (F.exp(h) / F.exp(h))", "h + h * 0",
                               "F.log(F.exp(h))", "F.log(1 + h * h)", "F.exp(h * 0.1) - 1"])


def _scalar_of_shape(rng, st, L):
    a = int(rng.integers(st.rank))
    return pick(rng, [f"h = h / h.shape[{a}]", f"h = h * (h.shape[{a}] / 2)",
                      f"n = h.shape[{a}]\nh = h + n * 0.1",
                      f"h = h - h.sum(0) / h.shape[0]"])


def _inplace(rng, st, L):
    opts = ["h += 1.0", "h *= 0.5", "h = h + 0.0\nh[0] = h[0] * 2.0", "h = h * 1.0\nh[:, 0] = 0.5"]
    return pick(rng, opts)


def _conv(rng, st, L):
    if st.rank != 4 or st.c is None:
        return None
    c2 = int(rng.integers(2, 5))
    name = f"l{len(L)}"
    L.append((name, f"M.Conv2d({st.c}, {c2}, 3, padding=1)"))
    st.c = c2
    return f"h = m.{name}(h)"


def _bn(rng, st, L):
    if st.rank != 4 or st.c is None:
        return None
    name = f"l{len(L)}"
    L.append((name, f"M.BatchNorm2d({st.c})"))
    return f"h = m.{name}(h)"


def _pool(rng, st, L):
    if st.rank != 4 or st.hb < 1 or st.wb < 1:
        return None
    st.hb -= 1
    st.wb -= 1
    return pick(rng, ["h = F.max_pool2d(h, 2)", "h = F.avg_pool2d(h, 2)",
                      "h = F.max_pool2d(h, 2, stride=2, padding=0)"])


def _interp(rng, st, L):
    if st.rank != 4:
        return None
    if rng.random() < 0.5 and st.hb <= 3:
        st.hb += 1
        st.wb += 1
        return pick(rng, ['h = F.nn.interpolate(h, scale_factor=2, mode="nearest")',
                          'h = F.nn.interpolate(h, scale_factor=2.0, mode="bilinear", '
                          'align_corners=False)'])
    st.hb = st.wb = 3
    return 'h = F.nn.interpolate(h, size=x.shape[2:], mode="bilinear", align_corners=False)'


def _adaptive(rng, st, L):
    if st.rank != 4 or st.hb < 1 or st.wb < 1:
        return None
    st.hb = st.wb = 1
    return "h = F.adaptive_avg_pool2d(h, (2, 2))"


def _softmax(rng, st, L):
    return pick(rng, ["h = F.softmax(h, axis=1)", "h = F.logsoftmax(h, axis=1)"])


def _reduce_bcast(rng, st, L):
    if st.rank == 4:
        return pick(rng, ["h = h - F.broadcast_to(h.mean(axis=(2, 3), keepdims=True), h.shape)",
                          "h = h * F.sigmoid(h.max(axis=1, keepdims=True))"])
    return "h = h - F.broadcast_to(h.mean(1, keepdims=True), h.shape)"


def _zeros(rng, st, L):
    if st.rank == 4:
        return pick(rng, ["h = h + F.zeros((h.shape[0], h.shape[1], h.shape[2], h.shape[3]))",
                          "h = h + F.ones(h.shape) * 0.5", "h = h + F.zeros_like(h)",
                          "n, c, hh, ww = h.shape\nh = h + F.full((n, c, hh, ww), 0.25)"])
    if st.c is not None:
        st.c += 2
    return "h = F.concat([h, F.zeros((h.shape[0], 2))], axis=1)"


def _concat(rng, st, L):
    if st.c is not None:
        st.c *= 2
    return "h = F.concat([h, h * 0.5], axis=1)"


def _split(rng, st, L):
    if st.rank == 4 and st.hb >= 1 and rng.random() < 0.5:
        return "a, b = F.split(h, [h.shape[2] // 2], axis=2)\nh = F.concat([b, a], axis=2)"
    if st.c is not None and st.c % 2 == 0:
        st.c //= 2
        return "a, b = F.split(h, 2, axis=1)\nh = a * b"
    return None


def _stack(rng, st, L):
    return "h = F.stack([h, F.relu(h)], axis=0).mean(0)"


def _slice(rng, st, L):
    if st.rank == 4 and st.hb >= 1 and rng.random() < 0.6:
        st.hb -= 1
        return pick(rng, ["h = h[:, :, : h.shape[2] // 2]", "h = h[:, :, ::2]",
                          "k = int(h.shape[2])\nh = h[:, :, : max(1, k // 2)]"])
    if st.c is not None and st.c >= 2:
        st.c = st.c // 2 + 1
        return "h = h[:, : h.shape[1] // 2 + 1]"
    return None


def _branch(rng, st, L):
    return pick(rng, ["if h.shape[0] > 1:\n    h = h * 2.0\nelse:\n    h = h - 1.0",
                      f"if h.shape[{st.rank - 1}] >= 8:\n    h = h + 1.0"])


def _loop(rng, st, L):
    return pick(rng, ["h = F.concat([h[i : i + 1] * (i + 1) for i in range(h.shape[0])], axis=0)",
                      "acc = h * 0\nfor i in range(int(h.shape[0])):\n    acc = acc + h[i]\n"
                      "h = h + acc * 0.1"])


def _to_rank2(rng, st, L, symshape):
    if st.rank != 4:
        return None
    st.rank = 2
    r = rng.random()
    if r < 0.25:
        return "h = h.mean(axis=(2, 3))"  # c stays
    if r < 0.45:
        return "s = Tensor(h.shape)\nh = h.reshape(s[0], s[1], -1).max(2)"
    if r < 0.6:
        symshape.append(True)
        return "s = h.shape.numpy()\nh = h.reshape(int(s[0]), int(s[1]), -1).sum(2)"
    st.c = None  # (C * H * W: follows the input's sizes)
    return pick(rng, ["h = h.reshape(h.shape[0], -1)", "h = F.flatten(h, 1)",
                      "h = h.reshape(Tensor(h.shape)[0], -1)"])


def _linear(rng, st, L):
    if st.rank != 2 or st.c is None:
        return None
    c2 = int(rng.integers(2, 6))
    name = f"l{len(L)}"
    L.append((name, f"M.Linear({st.c}, {c2})"))
    st.c = c2
    return f"h = m.{name}(h)"


def _matmul(rng, st, L):
    if st.rank != 2 or st.c is None:
        return None
    c2 = int(rng.integers(2, 5))
    w = np.round(rng.uniform(-1, 1, (st.c, c2)), 2).tolist()
    st.c = c2
    return f"h = F.matmul(h, mge.tensor({w}, dtype='float32'))"


def _shape_ops(rng, st, L):
    """Ops whose parameters are built from sizes in the ways real code builds them."""
    r = st.rank
    opts = [f"h = h + F.arange(h.shape[{r - 1}]) * 0.01",
            f"h = h * F.linspace(0.5, 1.5, h.shape[{r - 1}])",
            "h = h + F.broadcast_to(h[:1], h.shape)",
            "h = h + F.expand_dims(h.sum(1), 1)",
            f"h = h / math.sqrt(h.shape[{r - 1}])",
            f"h = h * float(h.shape[0])",
            "h = h[h.shape[0] - 1 :] + h[: h.shape[0] - 1].sum(0) * 0.1",
            "h = h + h[-1]",
            "h = h * 1.0\nh[:, : h.shape[1] // 2] = 0.5",
            "h = h * 1.0\nh[h.shape[0] - 1] = h[0]",
            f"h = h + min(h.shape[{r - 1}], 4) * 0.1",
            f"h = h + (h.shape[{r - 1}] ** 2) * 0.01",
            f"h = h * (np.prod(h.shape[1:]) / 100.0)",
            "s = h.shape\nh = h.reshape(s[0] * s[1], -1).reshape(s)",
            "h = F.repeat(h, 2, axis=1)[:, : h.shape[1]]",
            "h = F.tile(h, (1, 2) + (1,) * (h.ndim - 2))[:, h.shape[1] :]",
            f"h = F.transpose(F.transpose(h, {tuple(reversed(range(r)))}) + 1.0, "
            f"{tuple(reversed(range(r)))})",
            # size-taking parameters (found refusing sizes of a dumpable trace)
            f"h = F.roll(h, h.shape[{r - 1}] // 2, axis={r - 1})",
            "h = F.clip(h, -h.shape[0] * 0.5, h.shape[0] * 0.5)",
            "h = F.concat(F.split(h, h.shape[1], axis=1)[::-1], axis=1)",
            f"h = F.layer_norm(h, h.shape[{r - 1}])"]
    if r == 4:
        opts += ["h = h + F.nn.interpolate(x[:, :1], size=h.shape[2:], mode='nearest')",
                 "n, c, hh, ww = h.shape\nh = h.reshape(n, c, hh * ww).transpose(0, 2, 1)"
                 ".reshape(n, hh, ww, c).transpose(0, 3, 1, 2)",
                 "h = F.adaptive_max_pool2d(F.nn.interpolate(h, size=(h.shape[2] * 2, "
                 "h.shape[3] * 2)), h.shape[2:])",
                 "hh = math.floor(h.shape[2] * 1.5)\nh = F.nn.interpolate(h, size=(hh, "
                 "h.shape[3]))[:, :, : h.shape[2]]"]
    return pick(rng, opts)


def _shape_values(rng, st, L, symshape):
    """Shapes as tensors and arrays."""
    opts = ["h = F.reshape(h, F.concat([Tensor(h.shape)[:1], mge.tensor([-1])]))"
            ".reshape(h.shape)",
            "s = Tensor(h.shape)\nh = h.reshape(s[0], -1).reshape(h.shape)",
            "h = F.broadcast_to(h[:1] * 0.5, Tensor(h.shape))",
            "h = F.zeros(Tensor(h.shape)) + h",
            "s = Tensor(h.shape)\nh = h.reshape(s[0] * s[1], -1).reshape(s)"]
    r = rng.random()
    if r < 0.4:
        symshape.append(True)
        return pick(rng, ["s = h.shape.numpy()\nh = h.reshape(s[0] * s[1], -1).reshape(s)",
                          "s = h.shape.numpy()\nh = F.broadcast_to(h.sum(0, keepdims=True), s)",
                          "s = h.shape.numpy()\nh = h + F.zeros(s.tolist())",
                          "s = h.shape.numpy()\nh = h * (int(s.sum()) * 0.01)"])
    return pick(rng, opts)


# ----- writes (inserted by `_with_writes` after the other steps are drawn) -----

STATE = "w"  # a Parameter of shape (4,) in ``m``: the state that some programs write
STATE_LAYER = (STATE, "mge.Parameter(np.zeros(4, 'float32'))")
STATE_WRITES = ["m.w.set_value(m.w * 0.5 + h.mean())", "m.w._reset(m.w + F.tanh(h.mean()))",
                "m.w[1:3] = h.mean() * 0.5", "m.w += 0.25", "m.w *= F.sigmoid(h.mean()) + 0.5",
                "m.w.set_value(np.array([0.5, -1.0, 2.0, 0.25], 'float32'))",
                "m.w[...] = 1.5", "m.w[0] = m.w[3] * 2.0"]
# the writes that overwrite ``m.w`` whole without reading it (under capture_as_const the
# captured value is then read nowhere: upstream and this fork compare nothing)
STATE_OVERWRITES = ["m.w.set_value(np.array([0.5, -1.0, 2.0, 0.25], 'float32'))", "m.w[...] = 1.5"]
STATE_READS = ["h = h + m.w.mean()", "h = h * (1.0 + 0.1 * m.w[2])",
               "h = h - m.w[1:3].sum() * 0.5"]
# into the argument (``h`` is ``x`` itself until a step makes a new value)
ARG_WRITES = ["x += 0.5", "x *= 1.5", "x[:, 0] = x[:, 1] * 0.5", "x[0] = 1.0",
              "x.set_value(x * 0.5)", "x._reset(x + 1.0)", "x[:, :, 0] = np.float32(2.0)"]
ARG_READS = ["h = h + x.mean()", "h = h * F.sigmoid(x.max())"]
COMPUTED_WRITES = ["wv = h * 1.0\nwv += h.mean()\nh = h + wv * 0.5",
                   "wv = F.relu(h)\nwv *= 2.0\nh = h - wv",
                   "wv = h + 0.0\nwv[0] = wv[0] * 3.0\nh = wv",
                   "wv = h * 1.0\nwv[:, 0] = np.float32(0.25)\nh = h + wv",
                   "wv = h + 1.0\nwv._reset(wv * wv)\nh = h + wv * 0.1",
                   "wv = h * 0.5\nwv.set_value(wv + h)\nh = wv",
                   "wv = h * 1.0\nwv[...] = 2.0\nh = h * wv",
                   "wv = h * 1.0\nwv.set_value(0.5)\nh = h + wv", "h += h.mean()"]


def _with_writes(wrng, steps, layers, train):
    """``steps`` with 1-3 write blocks inserted at drawn places (and ``layers`` with the state
    Parameter where one writes it): into ``m.w`` (inference only: a training step's optimizer
    owns the parameters), the argument or a computed value; a write is mostly read again by
    the next step, and ``m.w`` sometimes also before it."""
    steps, layers = list(steps), list(layers)
    kinds = ["arg", "computed"] + ([] if train else ["state"] * 3)
    for _ in range(int(wrng.integers(1, 4))):
        kind = pick(wrng, kinds)
        at = int(wrng.integers(1 if train else 0, len(steps) + 1))  # (a training step's conv
        # stays first)
        if kind == "computed":
            block = [pick(wrng, COMPUTED_WRITES)]
        else:
            writes, reads = (STATE_WRITES, STATE_READS) if kind == "state" else (ARG_WRITES,
                                                                                  ARG_READS)
            block = [pick(wrng, writes)]
            if wrng.random() < 0.7:
                block.append(pick(wrng, reads))
            if kind == "state" and wrng.random() < 0.3:
                block.insert(0, pick(wrng, reads))
        steps[at:at] = block
    if any(f"m.{STATE}" in s for s in steps):
        layers.append(STATE_LAYER)
    return steps, layers


# ----- sorts (inserted by `_with_lines` after the other steps and the writes are drawn) -----

# sort, topk and roll, whose FBS_V2 writers once kept traced sizes (a file traced at batch 2
# raised at batch 3, or for a whole turn of a roll silently gave x unrolled), and matrix
# products of batches, whose files upstream once refused to load: each line keeps
# ``h``'s shape at any rank (the last axis's size is at least 1: k is 1, or 2 of a concat that
# doubles it), so it fits anywhere
SORTS = ["h = F.sort(h)[0]", "h = F.sort(h, descending=True)[0]", "h = h + F.topk(h, 1)[0]",
         "h = h - F.topk(h, 1, descending=True)[0] * 0.5",
         "h = h + F.expand_dims(F.topk(h, 1, kth_only=True)[0], -1)",
         "h = h * 0.5 + F.expand_dims(F.topk(F.concat([h, h * 0.5], axis=-1), 2, "
         "kth_only=True)[0], -1)",
         "h = F.roll(h, 1)", "h = F.roll(h, 1, 0)",
         # matrix products whose FBS_V2 files upstream could not load (one MatrixMul /
         # BatchedMatrixMul of a 4-d batch, of a batch and a matrix or a vector)
         "h = F.matmul(F.softmax(F.matmul(h, F.transpose(h, tuple(range(h.ndim - 2)) + "
         "(h.ndim - 1, h.ndim - 2))) * 0.1, -1), h)",
         "h = F.matmul(h, F.ones((h.shape[-1], h.shape[-1])) * 0.25) - h",
         "h = h + F.expand_dims(F.matmul(h, F.ones(h.shape[-1])), -1) * 0.1"]


def _with_lines(rng, steps, train, lines):
    """``steps`` with 1-2 of ``lines`` (`SORTS`, `LAYER_FNS`) inserted at drawn places (after
    a training step's first convolution, as `_with_writes`)."""
    steps = list(steps)
    for _ in range(int(rng.integers(1, 3))):
        steps.insert(int(rng.integers(1 if train else 0, len(steps) + 1)), pick(rng, lines))
    return steps


# ----- layer functions (inserted by `_with_lines` after the sorts are drawn) -----

# the functions deployed models are made of beyond the steps above (activations, math,
# normalisations, padding, up-sampling, depthwise and transposed convolutions, vision ops),
# with weights and boxes built from sizes as real code builds them: each line keeps ``h``'s
# shape, at any rank (rank 2 or 4 here), or only at rank 4 behind ``if h.ndim == 4``
LAYER_FNS = [
    "h = F.leaky_relu(h, 0.1)", "h = F.gelu(h)", "h = F.silu(h)", "h = F.hswish(h)",
    "h = F.hsigmoid(h) * h", "h = F.relu6(h * 3.0)", "h = F.softplus(h)", "h = F.logsigmoid(h)",
    "h = F.sqrt(F.abs(h) + 0.1)", "h = F.pow(F.abs(h) + 0.5, 1.5)",
    "h = F.where(h > 0, h, h * 0.2)", "h = F.cumsum(h, axis=h.ndim - 1) * 0.1",
    "h = F.sign(h) * F.sqrt(F.abs(h) + 0.25)", "h = F.floor(h * 4) / 4 + F.ceil(h) * 0.1",
    "h = F.sin(h) + F.cos(h)", "h = F.log1p(F.abs(h)) + F.expm1(h * 0.1)",
    # (upstream's argsort takes 1 or 2 axes: rows of the last axis, as real code makes them)
    "h = F.gather(h, h.ndim - 1, F.argsort(h.reshape(-1, h.shape[-1])).reshape(h.shape))",
    "h = F.scatter(h, h.ndim - 1, F.argsort(h.reshape(-1, h.shape[-1])).reshape(h.shape), "
    "h * 2.0)",
    "h = h + F.one_hot(F.argmax(h, axis=h.ndim - 1), h.shape[-1]) * 0.5",
    "h = F.norm(h, axis=-1, keepdims=True) * 0.1 + h",
    "h = h - F.logsumexp(h, axis=h.ndim - 1, keepdims=True)",
    "h = h * F.std(h, axis=-1, keepdims=True)",
    "h = F.mean(h, axis=1, keepdims=True) * F.var(h, axis=1, keepdims=True) + h",
    "h = F.prod(F.clip(h, 0.9, 1.1), axis=-1, keepdims=True) * h",
    "h = F.nn.dropout(h, 0.5, training=False)", "h = F.normalize(h, axis=-1)",
    "h = F.round(h * 2) / 2", "h = F.tan(F.clip(h, -1, 1)) + F.atan2(h, h + 3.0)",
    "h = F.nn.softmax(h, axis=-1) * F.nn.logsoftmax(h, axis=-1)",
    "h = F.isinf(h).astype('float32') + F.isnan(h).astype('float32') + h",
    "h = F.matmul(h, F.ones((h.shape[-1], h.shape[-1])) * 0.1, transpose_b=True)",
    "h = F.nn.linear(h, F.ones((h.shape[-1], h.shape[-1])) * 0.1, F.ones(h.shape[-1]))",
] + ["if h.ndim == 4:\n    " + line for line in [
    "h = F.conv2d(h, F.ones((h.shape[1], 1, 1, 3, 3)) / 9.0, padding=1, groups=h.shape[1])",
    "h = F.conv_transpose2d(h, F.ones((h.shape[1], h.shape[1], 2, 2)) * 0.1, "
    "stride=2)[:, :, ::2, ::2]",
    "h = F.pixel_shuffle(F.concat([h, h * 0.5, h * 0.25, -h], axis=1), 2)[:, :, ::2, ::2]",
    "h = F.nn.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)), mode='reflect')[:, :, 1:-1, 1:-1] * 2",
    "h = F.nn.pad(h, ((0, 0), (0, 0), (2, 0), (0, 2)), mode='edge')[:, :, :-2, 2:]",
    "h = F.nn.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_value=0.5)[:, :, 2:, :-2]",
    "h = F.local_response_norm(h, 3)", "h = F.nn.instance_norm(h, affine=False)",
    "h = F.nn.group_norm(h, 1, affine=False)",
    "h = F.avg_pool2d(h, 3, stride=1, padding=1, mode='average')",
    "h = F.max_pool2d(h, 3, stride=1, padding=1)",
    "h = h * F.sigmoid(F.adaptive_avg_pool2d(h, 1))",
    "h = F.warp_perspective(h, F.broadcast_to(mge.tensor([[1.0, 0.1, 0.5], [0.0, 1.0, -0.5], "
    "[0.0, 0.0, 1.0]]), (h.shape[0], 3, 3)), h.shape[2:])",
    "h = F.sliding_window(h, 3, padding=1).mean(axis=(4, 5))",
    "h = F.vision.remap(h, F.broadcast_to(F.stack(F.meshgrid(F.arange(h.shape[3]) * 0.9, "
    "F.arange(h.shape[2]) * 1.0), axis=-1), (h.shape[0], h.shape[2], h.shape[3], 2)))",
    "h = F.vision.roi_align(h, F.concat([F.arange(h.shape[0]).reshape(-1, 1), F.broadcast_to("
    "mge.tensor([[0.5, 0.5, 5.0, 6.0]]), (h.shape[0], 4))], axis=1), (h.shape[2], h.shape[3]))",
    "h = h + F.nn.embedding(F.argmax(h, axis=1), F.ones((h.shape[1], h.shape[1])) * 0.1)"
    ".transpose(0, 3, 1, 2)",
    "h = F.nn.batch_norm(h, F.zeros((1, h.shape[1], 1, 1)), F.ones((1, h.shape[1], 1, 1)) * 2, "
    "training=False)",
    "h = F.deformable_conv2d(h, F.ones((h.shape[1], h.shape[1], 3, 3)) * 0.05, F.zeros(("
    "h.shape[0], 18, h.shape[2], h.shape[3])), F.ones((h.shape[0], 9, h.shape[2], h.shape[3])), "
    "padding=1)",
    "h = F.swapaxes(h, 1, 2).transpose(0, 2, 1, 3) * 1.5",
]]


STEPS = [_shape_ops, _shape_ops, _shape_ops, _shape_values, _unary, _unary, _scalar_of_shape, _inplace, _conv, _conv, _bn, _pool, _interp,
         _adaptive, _softmax, _reduce_bcast, _zeros, _concat, _split, _stack, _slice, _branch,
         _loop, _to_rank2, _linear, _linear, _matmul]


def draw(seed, train=None, dyn=None, writes=None, sorts=None, layer_fns=None):
    """Program ``seed``: 3-15 steps; a training step (parameters, GradManager, optimizer) when
    ``train`` (drawn when None); with blocks that make values whose shapes data decides
    (`jit_dyn`) when ``dyn`` (drawn when None, from a stream of its own: the other steps of
    program ``seed`` are those it had before such blocks existed); with write blocks
    (`_with_writes`) when ``writes`` (drawn when None, from a stream of its own, and inserted
    among the steps drawn without them); with lines of `SORTS` when ``sorts`` (drawn when None,
    in a third of the programs, from a stream of its own, inserted among all the others: the
    other programs are those of before); with lines of `LAYER_FNS` when ``layer_fns`` (drawn
    when None, in two fifths of the programs, the same way)."""
    rng = np.random.default_rng([seed, 7])
    drng = np.random.default_rng([seed, 13])
    if dyn is None:
        dyn = drng.random() < 0.7
    if train is None:
        train = rng.random() < 0.3
    st, layers, steps, symshape = _State(), [], [], []
    want = int(rng.integers(3, 16))
    if train:  # a layer with parameters up front, so there is something to train
        steps.append(_conv(rng, st, layers))
    base = len(steps)
    while base < want:
        f = pick(rng, STEPS)
        before, n_layers, n_symshape = dict(vars(st)), len(layers), len(symshape)
        if f in (_to_rank2, _shape_values):
            s = f(rng, st, layers, symshape)
        else:
            s = f(rng, st, layers)
        if s is not None and (st.c is None or st.c <= 48):
            steps.append(s)
            base += 1
            if dyn and drng.random() < 0.3:
                steps.append(jit_dyn.step(drng, st))
        else:  # a step not taken leaves no trace (program 91814: a dropped concat's doubled
            # channel count made a later convolution expect 96 channels of 48)
            vars(st).update(before)
            del layers[n_layers:], symshape[n_symshape:]
    if dyn and not any("«" in s or "[mk]" in s or "g = " in s or "v = " in s for s in steps):
        steps.append(jit_dyn.step(drng, st))
    outputs = pick(rng, ["h", "h", "h, h.mean()", "h * 1.0, F.relu(h).sum(axis=0)",
                         "h, h.shape[0]", "h, x.shape[2] * 2"])
    if dyn and any(s.startswith(("mk =", "v", "ix =", "nz =", "s = F.abs")) for s in steps):
        r = drng.random()
        if r < 0.2:
            outputs += ", v"  # (a returned value whose shape data decides)
        elif r < 0.4:
            outputs += ", «O:v».shape[0]"  # (a size returned: a Tensor where it is symbolic)
    if train:
        outputs = "h"
    wrng = np.random.default_rng([seed, 17])  # (its own stream: see ``dyn``)
    if writes is None:
        writes = wrng.random() < 0.5
    if writes:
        steps, layers = _with_writes(wrng, steps, layers, train)
    srng = np.random.default_rng([seed, 19])  # (its own stream: see ``dyn``)
    if sorts is None:
        sorts = srng.random() < 1 / 3
    if sorts:
        steps = _with_lines(srng, steps, train, SORTS)
    lrng = np.random.default_rng([seed, 23])  # (its own stream: see ``dyn``)
    if layer_fns is None:
        layer_fns = lrng.random() < 0.4
    if layer_fns:
        steps = _with_lines(lrng, steps, train, LAYER_FNS)
    return Program(steps, layers, outputs, seed, bool(symshape), train, dyn)
