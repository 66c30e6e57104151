"""Fuzz generators of the `random` family: megengine.random's samplers and RNG objects,
megengine.distributions, megengine.module.init and dropout, with drawn (often edge) parameters;
supports, dtypes and shapes checked exactly, distributions by seeded statistical tests
(random_stats), densities and moments against torch.distributions."""
import math

import numpy as np
import torch

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.module.init as init
import megengine.random as R
from megengine.autodiff import GradManager
from megengine.distributions import Exponential

from .gen import Check, Mismatch, close, registry
from .random_stats import (bounded_mean, counts, discrete_ks, gamma_cdf, ks, normal_cdf,
                           poisson_pmf, z_mean)

OPS, op = registry("random")


def _source(rng):
    """A fresh seeded RNG object or the global generator reseeded from the case."""
    s = int(rng.integers(0, 2**31))
    if rng.random() < 0.5:
        return R.RNG(seed=s), f"RNG(seed={s})"
    R.seed(s)
    return R, f"seed({s})"


def _size(rng, n_lo=200, n_hi=3000):
    """A size argument: None, an int, a tuple, a shape Tensor, a 0-d count Tensor, or 0."""
    r = rng.random()
    n = int(rng.integers(n_lo, n_hi))
    if r < 0.05:
        return None, (1,)
    if r < 0.1:
        return 0, (0,)
    if r < 0.3:
        return n, (n,)
    if r < 0.4:
        return mge.tensor(n, dtype="int32"), (n,)
    if r < 0.5:
        return mge.tensor([2, n // 2], dtype="int32"), (2, n // 2)
    return (n // 4, 2, 2), (n // 4, 2, 2)


def _out(t, shape, dtype, what, finite=True):
    if not isinstance(t, mge.Tensor):
        raise Mismatch(f"{what}: returned {type(t).__name__}, not a Tensor")
    if tuple(t.shape) != tuple(shape):
        raise Mismatch(f"{what}: shape {tuple(t.shape)}, expected {tuple(shape)}")
    if np.dtype(t.dtype) != np.dtype(dtype):
        raise Mismatch(f"{what}: dtype {t.dtype}, expected {dtype}")
    v = t.numpy()
    if finite and v.dtype.kind == "f" and not np.isfinite(v).all():
        raise Mismatch(f"{what}: {np.count_nonzero(~np.isfinite(v))} non-finite samples")
    return v


def _in_range(v, low, high, what):
    """U[low, high) in v's float dtype: low <= v < high, unless no value of the dtype lies in
    [low, high): then the one nearest low. Returns (the smallest value >= low, whether it is
    below high)."""
    t = v.dtype.type
    cands = np.array([np.nextafter(t(low), t(-np.inf)), t(low), np.nextafter(t(low), t(np.inf))])
    first = float(cands[cands.astype(np.float64) >= low][0])
    exists = first < high
    v64 = v.astype(np.float64)
    bad = ((v64 < low) | (v64 >= high)) if exists else (v != t(low))
    if bad.any():
        raise Mismatch(f"{what}: {np.count_nonzero(bad)} samples outside [low, high), "
                       f"e.g. {v[bad][:3]}")
    return first, exists


@op("random_uniform")
def _uniform(rng):
    src, sd = _source(rng)
    r = rng.random()
    if r < 0.2:  # low and high close together (a few float32 steps, or less than one)
        low = float(rng.uniform(-1e3, 1e3))
        high = low + abs(low) * float(rng.choice([1e-8, 1e-7, 3e-7, 1e-6])) + 1e-30
    elif r < 0.4:
        low, high = sorted(float(v) for v in rng.uniform(-50, 0, 2))
    elif r < 0.5:
        low, high = 0.0, 1.0
    else:
        low = float(rng.uniform(-10, 10))
        high = low + float(10 ** rng.uniform(-3, 3))
    size, shp = _size(rng)
    what = f"{sd}.uniform(low={low!r}, high={high!r}, size={shp})"

    def check():
        v = _out(src.uniform(low=low, high=high, size=size), shp, "float32", what)
        first, exists = _in_range(v, low, high, what)
        if exists:  # the law of the draw rounded down (nothing lies below ``first``)
            ks(v, lambda x: np.where(x <= first, 0, np.clip((x - low) / (high - low), 0, 1)),
               what, rounding="down")
        return "ok"
    return Check(what, check)


@op("random_normal")
def _normal(rng):
    src, sd = _source(rng)
    mean = float(rng.choice([0.0, rng.uniform(-100, 100), -1e4]))
    std = float(rng.choice([1.0, 10 ** rng.uniform(-4, 3), 0.0]))
    size, shp = _size(rng)
    what = f"{sd}.normal(mean={mean!r}, std={std!r}, size={shp})"

    def check():
        v = _out(src.normal(mean=mean, std=std, size=size), shp, "float32", what)
        if std == 0:
            if v.size and not (v == np.float32(mean)).all():
                raise Mismatch(f"{what}: std 0 gives {v[:3]}, not mean")
            return "ok"
        ks(v, normal_cdf(mean, std), what)
        return "ok"
    return Check(what, check)


def _positive(rng, lo=-3, hi=3):
    """A positive parameter spanning tiny to huge, with exact edges."""
    return float(rng.choice([10 ** rng.uniform(lo, hi), 1.0, 0.5, 10 ** lo]))


def _params(rng, *values):
    """Scalars, or float32 Tensors broadcasting against each other (shapes (2, 1) and (2,))."""
    if rng.random() < 0.6:
        return values, None
    a = np.asarray(values[0], np.float32) * np.array([[1.0], [0.5]], np.float32)
    rest = [np.asarray(v, np.float32) * np.array([1.0, 2.0], np.float32) for v in values[1:]]
    return [mge.tensor(a)] + [mge.tensor(r) for r in rest], [a] + rest


def _flat_by_param(v, arrays, tail):
    """Split samples of shape size + broadcast(params) into (samples, params...) columns."""
    pshape = np.broadcast_shapes(*(a.shape for a in arrays))
    cols = v.reshape(-1, int(np.prod(pshape)))
    ps = [np.broadcast_to(a, pshape).ravel() for a in arrays]
    return [(cols[:, j], [float(p[j]) for p in ps]) for j in range(cols.shape[1])]


def _param_case(rng, name, draw_params, sample, check_one, n_hi=3000):
    src, sd = _source(rng)
    values = draw_params(rng)
    params, arrays = _params(rng, *values)
    size, shp = _size(rng, n_hi=n_hi)
    if size is None or (isinstance(size, int) and size == 0):
        shp = ()  # upstream: no size (or 0) gives the parameters' broadcast shape
    if arrays is not None:
        shp = tuple(shp) + np.broadcast_shapes(*(a.shape for a in arrays))
    shp = tuple(shp) or (1,)  # upstream 1.13 measured: a draw of no shape is one element, (1,)
    what = f"{sd}.{name}({', '.join(map(repr, values))}, tensors={arrays is not None}, size={shp})"

    def check():
        v = _out(sample(src, params, size), shp, "float32", what)
        groups = [(v.ravel(), list(values))] if arrays is None else _flat_by_param(
            v, arrays, shp)
        for col, ps in groups:
            check_one(col, ps, f"{what} at parameters {ps}")
        return "ok"
    return Check(what, check)


@op("random_gamma")
def _gamma(rng):
    def one(v, ps, what):
        k, theta = ps
        if (v < 0).any():
            raise Mismatch(f"{what}: negative samples {v[v < 0][:3]}")
        ks(v, gamma_cdf(k, theta), what)
    return _param_case(rng, "gamma", lambda r: (_positive(r, -1.5, 3), _positive(r, -3, 3)),
                       lambda s, p, size: s.gamma(*p, size=size), one)


@op("random_beta")
def _beta(rng):
    def one(v, ps, what):
        a, b = ps
        if ((v < 0) | (v > 1)).any():
            raise Mismatch(f"{what}: samples outside [0, 1]: {v[(v < 0) | (v > 1)][:3]}")
        mean = a / (a + b)
        var = a * b / ((a + b) ** 2 * (a + b + 1))
        bounded_mean(v, mean, var, what)
        # the second moment: (x - mean)**2 lies in [0, 1] with mean var and variance at most
        # var (it is below 1), Bernstein's bound applies
        bounded_mean((v.astype(np.float64) - mean) ** 2, var, var, what + " (variance)")
    return _param_case(rng, "beta", lambda r: (_positive(r, -1.5, 2.5), _positive(r, -1.5, 2.5)),
                       lambda s, p, size: s.beta(*p, size=size), one)


@op("random_poisson")
def _poisson(rng):
    def one(v, ps, what):
        lam, = ps
        if (v < 0).any() or (v != np.round(v)).any():
            raise Mismatch(f"{what}: samples not non-negative integers: {v[:5]}")
        discrete_ks(v, *poisson_pmf(lam), what)
    return _param_case(rng, "poisson", lambda r: (_positive(r, -3, 3.5),),
                       lambda s, p, size: s.poisson(*p, size=size), one)


@op("random_exponential")
def _exponential(rng):
    def one(v, ps, what):
        rate, = ps
        if (v < 0).any():
            raise Mismatch(f"{what}: negative samples")
        ks(v, lambda x: -np.expm1(-rate * np.maximum(x, 0)), what)
    return _param_case(rng, "exponential", lambda r: (_positive(r, -3, 3),),
                       lambda s, p, size: s.exponential(*p, size=size), one)


@op("random_multinomial")
def _multinomial(rng):
    src, sd = _source(rng)
    rows = int(rng.integers(0, 4))
    cats = int(rng.integers(1, 8))
    w = rng.uniform(0, 10, (max(rows, 1), cats))
    w[rng.random(w.shape) < 0.3] = 0
    w[:, int(rng.integers(cats))] += float(rng.choice([1e-3, 1.0, 1e3]))  # a non-zero per row
    w = w.astype(np.float32)
    weights = w[0] if rows == 0 else w
    replacement = bool(rng.random() < 0.5)
    nz = int((w > 0).sum(1).min())
    num = int(rng.integers(1, (40 if replacement else nz) + 1))
    reps = 400  # repeated draws, for the frequencies
    what = (f"{sd}.multinomial(weights {weights.shape}, {num}, replacement={replacement}) "
            f"weights={np.array2string(w, precision=3)}")

    def check():
        p = w / w.sum(1, keepdims=True)
        first = np.zeros_like(p)
        total = np.zeros_like(p)
        for _ in range(reps):
            v = _out(src.multinomial(mge.tensor(weights), num, replacement=replacement),
                     weights.shape[:-1] + (num,), "int32", what).reshape(-1, num)
            if ((v < 0) | (v >= cats)).any() or (w[np.arange(len(v))[:, None], v] == 0).any():
                raise Mismatch(f"{what}: drew a category out of range or of weight 0: {v}")
            for r, row in enumerate(v):
                if not replacement and len(set(row.tolist())) != num:
                    raise Mismatch(f"{what}: a draw without replacement repeats: {row}")
                first[r, row[0]] += 1
                np.add.at(total[r], row, 1)
        for r in range(len(p)):
            # the first draw of a row follows the normalised weights either way
            counts(first[r], p[r], reps, what + f" row {r} (first draws)")
            if replacement:
                counts(total[r], p[r], reps * num, what + f" row {r} (all draws)")
        return "ok"
    return Check(what, check)


@op("random_permutation")
def _permutation(rng):
    src, sd = _source(rng)
    n = int(rng.choice([0, 1, 2, int(rng.integers(3, 9)), int(rng.integers(50, 3000))]))
    dtype = str(rng.choice(["int32", "int16", "float32"]))
    as_tensor = rng.random() < 0.3
    reps = 300 if n <= 8 else 2
    what = f"{sd}.permutation({n}, dtype={dtype}, tensor={as_tensor})"

    def check():
        pos = np.zeros((n, n)) if n <= 8 else None
        for _ in range(reps):
            if as_tensor and n == 0:  # upstream's shuffle asserts size > 0: refused, as there
                try:
                    src.permutation(mge.tensor(np.zeros((0, 2), np.float32)))
                except ValueError:
                    return "ok"
                raise Mismatch(f"{what}: an empty Tensor was not refused")
            if as_tensor:
                base = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
                v = _out(src.permutation(mge.tensor(base)), (n, 2), "float32", what)
                if not np.array_equal(v[:, 1] - v[:, 0], np.ones(n, np.float32)):
                    raise Mismatch(f"{what}: rows were not kept whole: {v}")
                v = v[:, 0] / 2
            else:
                v = _out(src.permutation(n, dtype=dtype), (n,), dtype, what)
            if not np.array_equal(np.sort(v), np.arange(n)):
                raise Mismatch(f"{what}: not a permutation of range({n}): {v[:10]}")
            if pos is not None:
                pos[np.arange(n), v.astype(np.int64)] += 1
        if pos is not None:
            for i in range(n):  # each value lands in each place with probability 1/n
                counts(pos[i], np.full(n, 1.0 / n), reps, what + f" place {i}")
        return "ok"
    return Check(what, check)


@op("random_shuffle")
def _shuffle(rng):
    src, sd = _source(rng)
    n = int(rng.integers(1, 60))
    base = np.arange(n * 3).reshape(n, 3).astype(str(rng.choice(["float32", "int32"])))
    what = f"{sd}.shuffle(Tensor of shape {base.shape}, dtype {base.dtype})"

    def check():
        t = mge.tensor(base)
        view_before = t
        src.shuffle(t)
        v = _out(t, base.shape, base.dtype, what)
        if view_before is not t or not np.array_equal(np.sort(v[:, 0]), base[:, 0]) or \
                not np.array_equal(v[:, 1:] - v[:, :1], base[:, 1:] - base[:, :1]):
            raise Mismatch(f"{what}: rows not a permutation of the input's: {v}")
        return "ok"
    return Check(what, check)


@op("random_seeding")
def _seeding(rng):
    s = int(rng.integers(0, 2**32))
    calls = [lambda r: r.uniform(-1, 2, size=(5,)), lambda r: r.normal(1, 2, size=(2, 3)),
             lambda r: r.gamma(2.0, 3.0, size=4), lambda r: r.beta(0.5, 2.0, size=4),
             lambda r: r.poisson(3.0, size=4), lambda r: r.exponential(2.0, size=3),
             lambda r: r.permutation(7),
             lambda r: r.multinomial(mge.tensor([1.0, 2.0, 3.0]), 2)]
    order = [int(i) for i in rng.permutation(len(calls))]
    symbolic = bool(rng.random() < 0.5)
    what = f"seed {s}: the draws {order} repeated"

    def run(make):
        r = make()
        return [calls[i](r).numpy() for i in order]

    def check():
        for name, make in [("RNG(seed)", lambda: R.RNG(seed=s)),
                           ("megengine.random.seed", lambda: (R.seed(s), R)[1])]:
            a, b = run(make), run(make)
            for i, (x, y) in zip(order, zip(a, b)):
                if not np.array_equal(x, y):
                    raise Mismatch(f"{what} through {name}: draw {i} differs: {x} vs {y}")
        # a traced function draws anew on each replay, the same numbers as eager calls after
        # the same seed (upstream's RNG ops keep their handle's stream under jit)
        from megengine.jit import trace

        for src_name, make in [("RNG(seed)", lambda: R.RNG(seed=s)),
                               ("megengine.random.seed", lambda: (R.seed(s), R)[1])]:
            src = make()

            @trace(symbolic=symbolic)
            def drawn(x):
                return [x + calls[i](src).astype("float32").reshape(-1).sum() for i in order]

            x = mge.tensor(0.0)
            traced = [[y.numpy() for y in drawn(x)] for _ in range(3)]
            src = make()
            eager = [[calls[i](src).numpy().astype("float32").reshape(-1).sum() for i in order]
                     for _ in range(3)]
            close(np.array(traced), np.array(eager), (1e-5, 1e-5),
                  f"{what}: traced (symbolic={symbolic}) replays through {src_name}")
        # a seeded RNG object is independent of the global generator's state
        a = R.RNG(seed=s).uniform(size=(4,)).numpy()
        R.seed((s + 1) % 2**32)
        R.uniform(size=(3,))
        if not np.array_equal(a, R.RNG(seed=s).uniform(size=(4,)).numpy()):
            raise Mismatch(f"{what}: RNG(seed) depends on the global generator")
        return "ok"
    return Check(what, check)


@op("dist_exponential")
def _dist_exponential(rng):
    shp = tuple(int(d) for d in rng.integers(1, 4, int(rng.integers(0, 3))))
    rate = (10 ** rng.uniform(-2, 2, shp)).astype(np.float32)
    value = (rng.exponential(1.0, shp) / rate).astype(np.float32)
    prob = rng.uniform(0, 1, shp).astype(np.float32)
    sample_shape = tuple(int(d) for d in rng.integers(0, 4, int(rng.integers(0, 3))))
    what = f"Exponential(rate {shp}) sample_shape={sample_shape}"
    tol = (2e-5, 1e-6)

    def check():
        R.seed(int(rng.integers(0, 2**31)))
        t_rate = torch.tensor(rate, requires_grad=True)
        t_val = torch.tensor(value, requires_grad=True)
        td = torch.distributions.Exponential(t_rate)
        for name, mf, tf in [
                ("log_prob", lambda d, x: d.log_prob(x), lambda d, x: d.log_prob(x)),
                ("cdf", lambda d, x: d.cdf(x), lambda d, x: d.cdf(x)),
                ("icdf", lambda d, x: d.icdf(mge.tensor(prob)),
                 lambda d, x: d.icdf(torch.tensor(prob))),
                ("entropy", lambda d, x: d.entropy(), lambda d, x: d.entropy()),
                ("mean", lambda d, x: d.mean, lambda d, x: d.mean),
                ("variance", lambda d, x: d.variance, lambda d, x: d.variance),
                ("stddev", lambda d, x: d.stddev, lambda d, x: d.stddev)]:
            m_rate, m_val = mge.tensor(rate), mge.tensor(value)  # fresh: no accumulated grad
            gm = GradManager().attach([m_rate, m_val])
            with gm:
                y = mf(Exponential(m_rate), m_val)
                gm.backward(y.sum())
            ty = tf(torch.distributions.Exponential(t_rate), t_val)
            tg = torch.autograd.grad(ty.sum(), [t_rate, t_val], allow_unused=True)
            close(y.numpy(), ty.detach().numpy(), tol, f"{what}: {name}")
            for k, (mx, g) in enumerate(zip((m_rate, m_val), tg)):
                want = np.zeros(mx.shape, np.float32) if g is None else g.numpy()
                got = np.zeros(mx.shape, np.float32) if mx.grad is None else mx.grad.numpy()
                close(got, want, (1e-4, 1e-5), f"{what}: gradient of {name} in "
                      f"{('rate', 'value')[k]}")
        # samples: support, shape, distribution per rate; rsample's gradient is -x / rate
        n = 4000 // max(1, int(np.prod(shp + sample_shape, dtype=np.int64))) + 1
        full = (n,) + sample_shape
        m_rate = mge.tensor(rate)
        md = Exponential(m_rate)
        gm = GradManager().attach([m_rate])
        with gm:
            x = md.rsample(full)
            gm.backward(x.sum())
        v = _out(x, full + shp, "float32", what + " rsample")
        if (v < 0).any():
            raise Mismatch(f"{what}: negative samples")
        flat = v.reshape(-1, int(np.prod(shp, dtype=np.int64)))
        for j, r in enumerate(rate.ravel()):
            ks(flat[:, j], lambda z, r=float(r): -np.expm1(-r * np.maximum(z, 0)),
               f"{what} rate {r}")
        close(m_rate.grad.numpy(), -(v / rate).reshape(-1, *shp).sum(0), (1e-4, 1e-5),
              f"{what}: rsample's gradient in rate")
        _out(md.sample(sample_shape), sample_shape + shp, "float32", what + " sample")
        return "ok"
    return Check(what, check)


def _fans(shape):
    """Upstream's documented fans: (in, out) * receptive field; a 5-d weight is grouped
    (groups, out/groups, in/groups, kh, kw) and the group axis is ignored."""
    if len(shape) >= 5:
        shape = shape[1:]
    rf = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * rf, shape[0] * rf


@op("init")
def _init(rng):
    ndim = int(rng.integers(2, 6))
    shp = tuple(int(d) for d in rng.integers(1, 12, ndim))
    while int(np.prod(shp)) < 400:
        shp = (shp[0] * 2,) + shp[1:]
    dtype = str(rng.choice(["float32", "float32", "float16"]))
    kind = str(rng.choice(["uniform_", "normal_", "xavier_uniform_", "xavier_normal_",
                           "msra_uniform_", "msra_normal_"]))
    gain = float(rng.choice([1.0, rng.uniform(0.1, 3)]))
    a = float(rng.choice([0.0, 0.01, rng.uniform(0, 1)]))
    mode = str(rng.choice(["fan_in", "fan_out"]))
    nl = str(rng.choice(["leaky_relu", "relu", "tanh", "linear", "sigmoid", "conv2d"]))
    lo = float(rng.uniform(-5, 0))
    hi = lo + float(10 ** rng.uniform(-3, 1))
    what = f"init.{kind} on {shp} {dtype}"

    def check():
        mge.random.seed(int(rng.integers(0, 2**31)))  # the generator init draws from
        t = mge.tensor(np.zeros(shp, dtype))
        fan_in, fan_out = _fans(shp)
        got = init.calculate_fan_in_and_fan_out(t)
        if tuple(got) != (fan_in, fan_out):
            raise Mismatch(f"{what}: fans {got}, upstream's formula gives {(fan_in, fan_out)}")
        tg = torch.nn.init.calculate_gain(nl, a)
        if not math.isclose(init.calculate_gain(nl, a), tg, rel_tol=1e-12):
            raise Mismatch(f"{what}: calculate_gain({nl!r}, {a}) = "
                           f"{init.calculate_gain(nl, a)}, torch {tg}")
        fan = fan_in if mode == "fan_in" else fan_out
        he = tg / math.sqrt(fan)
        spec = {"uniform_": (lambda: init.uniform_(t, lo, hi), ("u", lo, hi)),
                "normal_": (lambda: init.normal_(t, lo, hi - lo), ("n", lo, hi - lo)),
                "xavier_uniform_": (lambda: init.xavier_uniform_(t, gain),
                                    ("u", -gain * math.sqrt(6 / (fan_in + fan_out)),
                                     gain * math.sqrt(6 / (fan_in + fan_out)))),
                "xavier_normal_": (lambda: init.xavier_normal_(t, gain),
                                   ("n", 0.0, gain * math.sqrt(2 / (fan_in + fan_out)))),
                "msra_uniform_": (lambda: init.msra_uniform_(t, a, mode, nl),
                                  ("u", -math.sqrt(3) * he, math.sqrt(3) * he)),
                "msra_normal_": (lambda: init.msra_normal_(t, a, mode, nl), ("n", 0.0, he))}
        fill, (law, p1, p2) = spec[kind]
        desc = f"{what} ({law} {p1:.4g}, {p2:.4g}; a={a}, mode={mode}, nl={nl}, gain={gain})"
        fill()
        v = _out(t, shp, dtype, desc)
        if law == "u":
            # U[a, b) in the tensor's dtype: the rounded bounds
            first, exists = _in_range(v, p1, p2, desc)
            if exists:  # rounded down, as megengine.random.uniform
                ks(v, lambda x: np.where(x <= first, 0, np.clip((x - p1) / (p2 - p1), 0, 1)),
                   desc, rounding="down")
        elif dtype == "float32":
            ks(v, normal_cdf(p1, p2), desc)
        else:
            z_mean(v, p1, p2 ** 2, desc, slack=1e-3 * (abs(p1) + p2))
        return "ok"
    return Check(what, check)


@op("dropout")
def _dropout(rng):
    p = float(rng.choice([0.0, 0.5, rng.uniform(0, 1), 1e-3, 0.999, 1 - 1e-5]))  # (last: float16
    # overflows 1 / (1 - p))
    shp = tuple(int(d) for d in rng.integers(1, 30, int(rng.integers(1, 4))))
    dtype = str(rng.choice(["float32", "float32", "float16"]))
    training = bool(rng.random() < 0.85)
    as_module = bool(rng.random() < 0.4)
    x = rng.uniform(0.5, 2, shp).astype(dtype)
    what = f"dropout(p={p}, shape {shp}, {dtype}, training={training}, module={as_module})"

    def check():
        R.seed(int(rng.integers(0, 2**31)))
        mx = mge.tensor(x)
        gm = GradManager().attach([mx])
        with gm:
            if as_module:
                m = M.Dropout(p)
                m.train(training)
                y = m(mx)
            else:
                y = F.nn.dropout(mx, p, training=training)
            gm.backward(y.sum())
        # a float16 scale 1 / (1 - p) beyond 65504 is inf: kept values are inf, as in float16
        v = _out(y, shp, dtype, what, finite=np.isfinite(np.dtype(dtype).type(1 / (1 - p))))
        g = mx.grad.numpy()
        if not training or p == 0:
            if not np.array_equal(v, x) or not (g == 1).all():
                raise Mismatch(f"{what}: not the identity")
            return "ok"
        if np.isnan(v).any() or np.isnan(g).any():
            raise Mismatch(f"{what}: NaN in the output or gradient")
        keep = v != 0
        scale = np.dtype(dtype).type(1 / (1 - p))
        close(v[keep], x[keep] * scale, (2e-3 if dtype == "float16" else 1e-6, 0), what)
        close(g, np.where(keep, scale, np.dtype(dtype).type(0)), (2e-3 if dtype == "float16" else 1e-6, 0), what + " gradient")
        counts([keep.sum()], [1 - p], keep.size, what + " (kept elements)")
        return "ok"
    return Check(what, check)


@op("random_refusals")
def _refusals(rng):
    """Invalid arguments upstream refuses: megengine must raise its own clear error."""
    from .gen import _is_ours

    src, sd = _source(rng)
    w = mge.tensor([1.0, 0.0, 2.0])
    bad = [("uniform(low=high)", lambda: src.uniform(1.0, 1.0, size=3)),
           ("uniform(low>high)", lambda: src.uniform(2.0, -1.0, size=3)),
           ("normal(std<0)", lambda: src.normal(0.0, -1.0, size=3)),
           ("gamma(shape=0)", lambda: src.gamma(0.0, 1.0, size=3)),
           ("gamma(scale<0)", lambda: src.gamma(1.0, -2.0, size=3)),
           ("beta(alpha<0)", lambda: src.beta(-1.0, 1.0, size=3)),
           ("poisson(lam=0)", lambda: src.poisson(0.0, size=3)),
           ("exponential(rate<0)", lambda: src.exponential(-1.0, size=3)),
           ("size<0", lambda: src.normal(size=(2, -1))),
           ("size float", lambda: src.uniform(size=(2.5,))),
           ("permutation(-1)", lambda: src.permutation(-1)),
           ("permutation(dtype=float64)", lambda: src.permutation(4, dtype="float64")),
           ("multinomial 3-d", lambda: src.multinomial(w.reshape(1, 1, 3), 1)),
           ("multinomial too many", lambda: src.multinomial(w, 3, replacement=False)),
           ("multinomial negative", lambda: src.multinomial(mge.tensor([1.0, -1.0]), 1)),
           ("shuffle(ndarray)", lambda: src.shuffle(np.arange(3))),
           ("Exponential(rate 0)", lambda: Exponential(mge.tensor([1.0, 0.0]))),
           ("dropout(p=1)", lambda: F.nn.dropout(mge.tensor([1.0]), 1.0)),
           ("dropout(p<0)", lambda: F.nn.dropout(mge.tensor([1.0]), -0.1)),
           ("init fan of 1-d", lambda: init.xavier_uniform_(mge.tensor([1.0, 2.0]))),
           ("calculate_gain", lambda: init.calculate_gain("swish")),
           ("msra mode", lambda: init.msra_normal_(mge.tensor(np.ones((2, 2))), mode="fan"))]
    name, call = bad[int(rng.integers(len(bad)))]
    what = f"{sd}: {name}"

    def check():
        try:
            call()
        except Exception as e:  # noqa: BLE001
            if not _is_ours(e):
                raise Mismatch(f"{what}: refused, but not by megengine's own check "
                               f"({type(e).__name__}: {e})") from e
            return "error"
        raise Mismatch(f"{what}: accepted what upstream refuses")
    return Check(what, check)
