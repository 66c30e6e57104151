"""Quantization-aware training programs drawn at random and run on this checkout and on
upstream MegEngine 1.13::

    python -m tests.fuzz.upstream_quant [--seeds N] [--start S] [--upstream PYTHON] [--show S]

Each seed writes a program (``--show S`` prints it): a float network of 1-4 drawn blocks on
8 x C x 5 x 5 images (``Conv2d``, ``ConvBn2d``, ``ConvBnRelu2d``, ``ConvRelu2d``, their
transposed forms, ``ReLU``, average and (windows apart) max pooling, residual ``Elemwise``
adds and products, ``Concat``) between a ``QuantStub`` and a head (``Linear``, ``LinearRelu``,
``LinearBn1d``, ``LinearBnRelu1d``) and a ``DequantStub``, its parameters given drawn values,
made a QAT network by ``quantize_qat`` with a drawn ``QConfig`` (the named ones, and observers
and fake quantizers of other dtypes: ``qint8_narrow``, ``quint8``, ``qint4``, histogram and
passive observers). Then drawn steps: forward passes in training and eval mode, SGD training
steps under a ``GradManager`` (outputs, parameters with their gradients), the observers' and
fake quantizers' switches (``enable_observer``, ``disable_fake_quant``, ...), each QAT layer's
activation and weight qparams, the state dict, ``reset_qconfig``, EasyQuant's search
(``apply_easy_quant`` after ``reset_qconfig(qat, passive_qconfig)``), and ``quantize`` (a copy)
with its quantized network's output on the same input.

Each program runs here and, with ``--upstream``, in upstream's interpreter
(tests/fuzz/both_engines.py by path); upstream is the oracle, compared as
tests/fuzz/both_engines.py says (values to 5 significant digits within 1e-4 of themselves:
scales at their 1e-5 floor differ by less than any absolute bound, seed 892); `rule` looks again
at the values apart (float32 noise, quantization boundaries) and counts the documented
differences. Without ``--upstream`` the programs run here only (each must build).
CI compares this checkout with upstream's recorded results
(tests/fuzz/upstream_quant.json, ``--record FILE``)."""
import re
import sys

import numpy as np

from tests.fuzz import both_engines as be

PRELUDE = '''
import copy
from functools import partial
import numpy as np
import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
import megengine.quantization as Q
from megengine.autodiff import GradManager

''' + be.ROUND + '''

def X(k):
    """Input ``k``: 8 x C x 5 x 5 values in [-1, 1) (numpy's legacy generator: the same draws
    on every numpy)."""
    return mge.tensor(np.random.RandomState(k).uniform(-1, 1, (8, C, 5, 5)).astype("float32"))


def fill(net, seed):
    """Every parameter of ``net`` drawn in [-0.6, 0.6), in sorted name order."""
    rs = np.random.RandomState(seed)
    for _, p in sorted(net.named_parameters()):
        p.set_value(rs.uniform(-0.6, 0.6, p.shape).astype("float32"))


def custom(w_dtype, a_dtype, act_observer="ExponentialMovingAverageObserver"):
    """A QConfig of these dtypes (an unsigned one asymmetric: its zero point holds 0)."""
    def mode(dtype):
        return Q.QuantMode.ASYMMERTIC if dtype.startswith("qu") else Q.QuantMode.SYMMERTIC
    return Q.QConfig(
        weight_observer=partial(Q.MinMaxObserver, dtype=w_dtype, mode=mode(w_dtype)),
        act_observer=partial(getattr(Q, act_observer), dtype=a_dtype, mode=mode(a_dtype)),
        weight_fake_quant=partial(Q.FakeQuantize, dtype=w_dtype),
        act_fake_quant=partial(Q.FakeQuantize, dtype=a_dtype))


def qp(q):
    if q is None:
        return None
    d = q.dtype_meta
    z = None if q.zero_point is None else r(q.zero_point.numpy())
    return [d.name, str(q.mode), r(q.scale.numpy()), z]


def qparams(net):
    """Each QAT layer's activation and weight qparams, by name."""
    return [[name, qp(m.get_activation_qparams()),
             qp(m.get_weight_qparams()) if m.with_weight else None]
            for name, m in net.named_modules() if hasattr(m, "get_activation_qparams")]


def floored(net):
    """Whether a QAT layer's scale is at its 1e-5 floor: a quantized layer's qint32 bias over
    two such scales passes the int32 range, which saturates here and wraps around upstream
    (docs/compatibility.rst), so its quantized output is not compared."""
    return any(q is not None and float(q[2] if np.ndim(q[2]) == 0 else min(q[2])) <= 1e-5
               for _, *qs in qparams(net) for q in qs)


def flat_norms(net, x):
    """Whether a batch norm in ``net`` (a copy, in training mode) sees a channel of nearly equal
    values in batch ``x``: it then normalises their float32 rounding noise."""
    seen = []

    def look(m, inputs, output):
        a = inputs[0].numpy()
        axes = (0,) + tuple(range(2, a.ndim))
        size = np.maximum(np.abs(a).max(axis=axes), 1e-3)
        seen.append(bool((a.max(axis=axes) - a.min(axis=axes) <= 1e-4 * size).any()))
    twin = copy.deepcopy(net)
    twin.train()
    for m in twin.modules():
        if type(m).__name__.startswith("BatchNorm"):
            m.register_forward_hook(look)
    twin(x)
    return any(seen)


def snap(y):
    """The output, and each parameter with its gradient; not the gradient of a bias before a
    batch norm, which the norm's mean cancels to float32 noise (seed 41: -6.3e-7 here, -1.0e-5
    upstream)."""
    params = dict(qat.named_parameters())
    cancelled = {k for k in params if k.endswith(".bias") and not k.endswith(".bn.bias")
                 and k.rsplit(".", 2)[0] + ".bn.weight" in params}
    return [r(y.numpy()), [[k, r(p.numpy()), None if p.grad is None or k in cancelled else
                            r(p.grad.numpy())] for k, p in sorted(params.items())]]


def state(net):
    """The state dict; of a histogram its count alone (where a layer's range is a float32 step
    apart its bins part by a fraction of a count: seed 91)."""
    return [[k, r(v.sum() if k.endswith(".histogram") else v)]
            for k, v in sorted(net.state_dict().items())]
'''

QCONFIGS = ("Q.ema_fakequant_qconfig", "Q.min_max_fakequant_qconfig",
            "Q.ema_lowbit_fakequant_qconfig", "Q.calibration_qconfig", "Q.tqt_qconfig",
            "Q.passive_qconfig", "Q.easyquant_qconfig",
            "Q.sync_ema_fakequant_qconfig",
            "custom('qint8_narrow', 'quint8')", "custom('qint8', 'qint8', 'MinMaxObserver')",
            "custom('qint4', 'qint4')", "custom('qint8', 'quint8', 'MinMaxObserver')",
            "custom('qint8', 'qint8', 'HistogramObserver')",
            "custom('quint8', 'qint8', 'PassiveObserver')")
CONVS = ("Conv2d", "ConvBn2d", "ConvBnRelu2d", "ConvRelu2d", "ConvTranspose2d",
         "ConvTransposeBn2d", "ConvTransposeRelu2d")
HEADS = ("Linear", "LinearRelu", "LinearBn1d", "LinearBnRelu1d")


class Draw:
    def __init__(self, seed):
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def pick(self, items):
        return items[int(self.rng.integers(len(items)))]

    def conv(self, c, c2):
        """A size-keeping convolution layer from ``c`` to ``c2`` channels."""
        kind = self.pick(CONVS)
        k = self.pick((1, 3))
        bias = "" if self.rng.random() < 0.7 else ", bias=False"
        return f"M.{kind}({c}, {c2}, {k}, padding={k // 2}{bias})"

    def build(self):
        c = int(self.rng.integers(1, 4))
        self.c, hw = c, 5
        layers, lines = [], ["h = self.q(x)"]
        for i in range(int(self.rng.integers(1, 5))):
            kind = self.pick(("conv", "conv", "conv", "relu", "pool", "add", "mul", "concat"))
            if kind == "conv":
                c2 = int(self.rng.integers(1, 5))
                layers.append(f"self.l{i} = {self.conv(c, c2)}")
                lines.append(f"h = self.l{i}(h)")
                c = c2
            elif kind == "relu":
                layers.append(f"self.l{i} = M.ReLU()")
                lines.append(f"h = self.l{i}(h)")
            elif kind == "pool":
                # (max pooling's windows do not overlap: where they do, this fork gives a
                # window's gradient to its first maximum, upstream to every tied one, and
                # quantized values tie often: docs/compatibility.rst)
                pool = self.pick(("M.MaxPool2d(2, 2)", "M.AvgPool2d(2, 1)", "M.AvgPool2d(3, 1, 1)",
                                  "M.MaxPool2d(2)"))
                layers.append(f"self.l{i} = {pool}")
                lines.append(f"h = self.l{i}(h)")
                hw = hw // 2 if pool.startswith("M.Max") else hw - 1 if "2, 1" in pool else hw
            elif kind in ("add", "mul"):
                layers += [f"self.l{i} = {self.conv(c, c)}", f"self.e{i} = M.Elemwise("
                           f"'{self.pick(('add', 'fuse_add_relu')) if kind == 'add' else 'mul'}')"]
                lines.append(f"h = self.e{i}(h, self.l{i}(h))")
            else:
                c2 = int(self.rng.integers(1, 3))
                layers += [f"self.l{i} = {self.conv(c, c2)}", f"self.k{i} = M.Concat()"]
                lines.append(f"h = self.k{i}([h, self.l{i}(h)], 1)")
                c += c2
        head = self.pick(HEADS)
        layers += [f"self.head = M.{head}({c * hw * hw}, 3)", "self.q = M.QuantStub()",
                   "self.dq = M.DequantStub()"]
        lines += ["h = self.head(F.flatten(h, 1))", "return self.dq(h)"]
        self.qconfig = self.pick(QCONFIGS)
        return "\n".join(
            [f"C = {self.c}", "", "", "class Net(M.Module):", "    def __init__(self):",
             "        super().__init__()"] + ["        " + s for s in layers]
            + ["", "    def forward(self, x):"] + ["        " + s for s in lines]
            + ["", "", "net = Net()", f"fill(net, {self.seed % 100000})",
               f"qat = Q.quantize_qat(net, qconfig={self.qconfig})",
               "opt = optim.SGD(qat.parameters(), lr=0.05, momentum=0.5)"])

    def step(self, k):
        r = self.rng.random()
        if r < 0.25:
            return f"qat.train()\nout = r(qat(X({k})).numpy())"
        if r < 0.4:
            return f"qat.eval()\nout = r(qat(X({k})).numpy())"
        if r < 0.6:
            loss = self.pick(("(y * y).sum()", "(y * mge.tensor([1.0, -2.0, 0.5])).sum()",
                              "F.relu(y).mean()"))
            return (f"qat.train()\ngm = GradManager().attach(qat.parameters())\nwith gm:\n"
                    f"    y = qat(X({k}))\n    gm.backward({loss})\nout = snap(y)\n"
                    "opt.step().clear_grad()")
        if r < 0.7:
            return "Q." + self.pick(("disable_observer", "enable_observer",
                                     "disable_fake_quant", "enable_fake_quant")) + "(qat)"
        if r < 0.78:
            return "out = qparams(qat)"
        if r < 0.84:
            return "out = state(qat)"
        if r < 0.88:
            return f"Q.reset_qconfig(qat, {self.pick(QCONFIGS)})\nout = qparams(qat)"
        if r < 0.92:
            bounds = self.pick(("0.8, 1.2, 5", "0.5, 1.5, 9", "0.9, 1.0, 3"))
            return (f"Q.reset_qconfig(qat, Q.passive_qconfig)\nqat.{self.pick(('eval', 'train'))}()"
                    f"\nQ.apply_easy_quant(qat, X({k}), {bounds})\nout = qparams(qat)")
        return (f"qm = Q.quantize(qat, inplace=False)\nqm.eval()\ny = qm(X({k}))\n"
                "out = 'a scale at its floor' if floored(qat) else r(y.numpy())")

    def steps(self):
        return [self.step(k) for k in range(int(self.rng.integers(4, 11)))]


def draw(seed):
    """The program of ``seed``: (build source, [step sources])."""
    d = Draw(seed)
    return d.build(), d.steps()


def rule(sources, i, mine, theirs):
    """The documented differences (docs/compatibility.rst), counted; a program stops at the
    rounding-boundary one, since the states differ from then on. Values are compared element
    by element within 1e-3 of themselves and 1e-4 of the largest magnitude in the step's
    result (a quantization step is 1/127 of a range and more): a gradient that cancels to 0
    holds float32 noise of the terms it sums (seed 13: -3.0e-6 here, 1.5e-6 upstream, where
    other gradients reach 0.45; seed 943: a bias whose layer feeds a batch norm through a
    linear layer, 7.2e-5 here and -3.2e-5 upstream), and a batch norm's scale gradient of a
    channel of nearly equal values in its batch is as far apart as their spread is small
    (seed 7: 2.4876 and 2.4864)."""
    if any("reset_qconfig" in sources[j] and mine[j][0] == theirs[j][0] == "raise"
           for j in range(1, i)):
        # (a reset_qconfig whose QConfig refuses a layer's qparams, a PassiveObserver of
        # another dtype, leaves the network as it was here; upstream 1.13 has reset the layers
        # before that one when it raises: seed 187)
        return "stop", "a reset_qconfig that raised: the network as it was here"
    if mine[i][0] == theirs[i][0] == "raise" and "nonlinear_mode shoule be" in \
            str(theirs[i][2]):
        # upstream 1.13 refuses a quantized ConvTransposeRelu2d first (docs/compatibility.rst:
        # fused here); this side's network fails later, for another cause
        return "count", "upstream refuses a quantized transposed convolution's ReLU first"
    m, t = mine[i], theirs[i]
    if m[0] != "ok" or t[0] != "ok" or be.same(m, t, FUZZER.tol):
        return None
    apart = _apart(m[1], t[1])
    if apart is None:  # (another layout: a finding)
        return None
    if not apart:
        return "count", "same to float32 rounding"
    if "apply_easy_quant" in sources[i] and _near_ties(sources, i):
        # (two candidate scales whose fake-quantized outputs are alike to float32 rounding:
        # their cosine similarities 0.24619698 and 0.24619695 here, and upstream's rounding
        # put the other first, seed 173)
        return "stop", "EasyQuant's candidates alike to float32 rounding"
    batch = re.search(r"qat\(X\((\d+)\)\)", sources[i])
    if batch and _flat_norms(sources, i, batch.group(1)):
        # (a batch norm over a channel of nearly equal values, a layer whose weights all
        # quantize to 0 or an input the layers before made the same for every sample: it
        # scales their float32 noise up to the norm's output; seeds 94 and 195)
        return "stop", "a batch norm over nearly equal values"
    # (values at quantization boundaries, which each side's float32 rounding of the layers
    # before them decides: a symmetric observer's extremes lie at -127.5 and 127.5 steps (-7.5
    # and 7.5 in 4 bits) by construction, and a layer's minimum one float32 step apart (its
    # sums' order) rounds to -7 steps here and -8 upstream (seed 14), its maximum's gradient
    # passes here and is clipped upstream; an observer's state follows (seed 90). The program
    # runs again here with every value that near a boundary rounded toward zero, then away:
    # where upstream's values differ only where these reruns change this side's, the
    # boundaries tell the difference; upstream's may still be neither rerun's, several
    # boundaries each rounded its own way (seed 23))
    moved = set()
    for away in (False, True):
        again = _step_again(sources, i, away)
        if again is not None:
            moved |= _apart(m[1], again[1], exact=True) or set()
    four_bits = any("lowbit" in src or "qint4" in src for src in sources[:i + 1])
    if apart <= moved or moved and four_bits:
        # (in 4 bits a layer's boundary values move the next layer's scale by a sixteenth:
        # one rounded its own way changes every value after it, seed 170)
        return "stop", "quantized values at rounding boundaries, each rounded its own way"
    if any(mine[j][0] == theirs[j][0] == "ok" and not be.same(mine[j], theirs[j], FUZZER.tol)
           for j in range(1, i)):
        # (an earlier step's values were apart by float32 rounding, so the networks' states
        # are too: a training step's gradients 1e-5 apart leave weights apart, whose batch
        # norm of a nearly constant channel or whose boundary values later part further; seed
        # 481's fifth step, an output 2% apart after a training step)
        return "stop", "states apart since an earlier step's float32 rounding"
    return None


def _arrays(v, path=()):
    """(path, float64 array) of each number and list of numbers in ``v`` (nested lists of them
    are one array), and (path, value) of every other leaf."""
    flat = np.asarray(v, dtype=object).ravel() if isinstance(v, (list, int, float)) else ()
    if len(flat) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
        yield path, np.asarray(v, np.float64)
    elif isinstance(v, list):
        for j, x in enumerate(v):
            yield from _arrays(x, path + (j,))
    else:
        yield path, v


def _apart(a, b, exact=False):
    """The set of (array path, element index) where ``a`` and ``b`` differ beyond rounding
    (`rule`), or at all (``exact``), or None where their layouts differ."""
    left, right = list(_arrays(a)), list(_arrays(b))
    if [p for p, _ in left] != [p for p, _ in right] or any(
            isinstance(x, np.ndarray) and np.shape(x) != np.shape(y)
            for (_, x), (_, y) in zip(left, right)):
        return None
    top = max([np.abs(x).max() for _, x in left + right
               if isinstance(x, np.ndarray) and x.size] + [0.0])
    apart = set()
    for (path, x), (_, y) in zip(left, right):
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            if x != y if exact else not be.close(x, y, FUZZER.tol):
                apart.add((path, 0))
            continue
        tol = 0 if exact else 1e-3 * np.maximum(np.abs(x), np.abs(y)) + 1e-4 * top + 1e-7
        apart.update((path, int(k)) for k in np.flatnonzero(np.abs(x - y) > tol))
    return apart


def _flat_norms(sources, i, k):
    """Whether a batch norm of the program's network, as it is before step ``i``, sees a
    channel of nearly equal values in batch ``X(k)`` (`flat_norms`), on this side."""
    check = (sources[0], list(sources[1:i]) + [f"out = flat_norms(qat, X({k}))"])
    result = be.run_all([check], PRELUDE)[0]
    return len(result) > i and result[i] == ["ok", True]


def _near_ties(sources, i):
    """Whether a search of step ``i``'s ``apply_easy_quant``, run again here, found another
    candidate within 1e-6 of its best similarity."""
    import importlib

    quantize = importlib.import_module("megengine.quantization.quantize")
    num = int(re.search(r"apply_easy_quant\(qat, X\(\d+\), [\d.]+, [\d.]+, (\d+)\)",
                        sources[i]).group(1))
    seen, plain = [], quantize._mean_cosine

    def spy(x, y):
        value = plain(x, y)
        seen.append(float(value.numpy()))
        return value
    quantize._mean_cosine = spy
    try:
        be.run_all([(sources[0], sources[1:i])], PRELUDE)
        before = len(seen)  # (the searches of earlier steps)
        be.run_all([(sources[0], sources[1:i + 1])], PRELUDE)
    finally:
        quantize._mean_cosine = plain
    for k in range(2 * before, len(seen) - num + 1, num):
        found = [v for v in seen[k:k + num] if v == v]
        best = max(found, default=0.0)
        if sum(abs(v - best) <= 1e-6 * abs(best) for v in found) > 1:
            return True
    return False


def _step_again(sources, i, away):
    """Step ``i``'s result here, the program run again up to it with the values at a rounding
    boundary in every fake quantization rounded toward zero, or ``away``; None where it
    raised."""
    from tests.fuzz.upstream_calls import rounding_nudged

    with rounding_nudged(away):
        again = be.run_all([(sources[0], sources[1:i + 1])], PRELUDE)[0]
    return again[i] if len(again) > i and again[i][0] == "ok" else None


FUZZER = be.Fuzzer("python -m tests.fuzz.upstream_quant", draw, PRELUDE, rule,
                   keep=lambda source: True, tol=(1e-4, 0.0))


if __name__ == "__main__":
    sys.exit(FUZZER.main(sys.argv[1:], __doc__))
