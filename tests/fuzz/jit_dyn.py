"""Steps of the jit fuzzer's programs (`jit_programs`) that make values whose shapes data decides
(a boolean mask index, ``cond_take``, ``F.where(mask)``, ``F.non_zero``, ``nms``) and use them:
reductions, elementwise work with other values of that data shape, their sizes as op parameters,
upstream's arithmetic rewrites, and Python uses of their sizes (``int(n)``, ``if n > 3``).

Where a step reads such a size it marks the read, so that the oracle can say what a trace must do
when a later call's data gives another size (`jit_check`): ``«R:v»`` reads ``v``'s shape into an
op, ``«Q:v»`` into a Python value only, ``«O:v»`` into a returned value only, ``«P:expr»`` is a
Python value made from a size. A program's plain source drops the marks; its probe source (run
eagerly as the oracle) logs them through `Probe`."""
import re

from .gen import pick

# thresholds away from the constants other steps write (0.25, 0.5, 0.1, 1.5) and from their
# sums: a mask decided by rounding would make eager and a rewritten trace select differently,
# which is no engine bug (0.3 was 0.25 + 0.05, a clipped value after a write of 1.5: program
# 97036's log(exp(h)), rewritten to h at opt_level 2, moved four values across it)
_THRESHOLDS = ["0.3137", "0.7071", "-0.2113"]


class Probe:
    """What one eager run of a probe source saw: ``P``: the Python values made from sizes that
    data decides; ``R``: the shapes of such values whose sizes went into ops; ``Q``: those whose
    sizes went into Python values only; ``O``: those whose sizes were only returned. `names` are
    the helpers a probe source calls."""

    def __init__(self):
        self.P, self.R, self.Q, self.O = [], [], [], []

    def seen(self):
        return tuple(list(log) for log in (self.P, self.R, self.Q, self.O))

    def reset(self):
        for log in (self.P, self.R, self.Q, self.O):
            log.clear()  # (in place: the helpers hold the lists)

    def names(self):
        def py(value):
            self.P.append(value)
            return value

        def rd(log):
            def read(t):
                log.append(tuple(int(d) for d in t.shape))
                return t
            return read

        return {"_py": py, "_rd": rd(self.R), "_rq": rd(self.Q), "_ro": rd(self.O)}


def plain(src):
    """``src`` without its marks: the program the trace runs."""
    src = re.sub(r"«[RQO]:(\w+)»", r"\1", src)
    return re.sub(r"«P:([^«»]*)»", r"\1", src)


def probed(src):
    """``src`` with its marks as `Probe` calls: the program the oracle runs."""
    src = re.sub(r"«R:(\w+)»", r"_rd(\1)", src)
    src = re.sub(r"«Q:(\w+)»", r"_rq(\1)", src)
    src = re.sub(r"«O:(\w+)»", r"_ro(\1)", src)
    return re.sub(r"«P:([^«»]*)»", r"_py(\1)", src)


def _make(rng, st):
    """Lines that make ``v``, a 1-D float value whose length data decides; whether every
    element is positive (``v / v`` is 1) and whether it is never empty; the line that makes
    ``w``, another value of ``v``'s data shape (None where there is none)."""
    t = pick(rng, _THRESHOLDS)
    pos = float(t) > 0
    kind = pick(rng, ["mask", "mask", "cond_take", "where", "where_nd", "non_zero", "nms",
                      "x_mask", "x_cond_take"])
    if kind == "mask":
        return (f"mk = h > {t}\nv = h[mk]", pos, False, "w = F.exp(h * 0.1)[mk]")
    if kind == "cond_take":
        return (f"v, ix = F.cond_take(h > {t}, h)", pos, False,
                f"w = F.cond_take(h > {t}, F.sigmoid(h))[0] + ix.astype('float32') * 0.01")
    if kind == "where":  # the one-argument form: the positions where the mask is True
        return (f"ix = F.where(h.flatten() > {t})[0]\nv = h.flatten()[ix]", pos, False,
                "w = F.exp(h.flatten() * 0.1)[ix]")
    if kind == "where_nd":
        return f"v = h[F.where(h > {t})]", pos, False, None
    if kind == "non_zero":
        return (f"nz = F.non_zero(h.flatten() > {t})\nv = h.flatten()[nz[:, 0]]", pos, False,
                "w = nz[:, 0].astype('float32') * 0.01")
    if kind == "nms":  # nested squares [0, 0, s, s]: their IoUs are ratios of the data
        # (v scaled back: folds of 10 |h| would grow h tenfold per block, to inf after exp,
        # and load_and_inference reads inf - inf as a difference)
        return ("s = F.abs(h.flatten()[:12]) * 10 + 1\n"
                "keep = F.vision.nms(F.stack([s * 0, s * 0, s, s], 1), s, 0.5)\nv = s[keep] * 0.1",
                True, True, "w = F.sqrt(s)[keep]")
    # masks of the input itself: data the checker chooses makes them empty or full
    if kind == "x_mask":
        return f"v = x[x > {t}] + h.mean()", False, False, f"w = F.abs(x[x > {t}])"
    return (f"v, ix = F.cond_take(x < {t}, x)\nv = v * F.sigmoid(h.sum())", False, False,
            "w = ix.astype('float32') * 0.001")


def _use(rng, pos, nonempty, pair):
    """One use of ``v`` (and maybe ``w``); the lines, or None where it does not fit."""
    kind = pick(rng, ["elem", "arith", "pair", "size", "size", "size", "python", "reduce",
                      "reduce"])
    if kind == "elem":
        return pick(rng, ["v = v * 2.0 + 1.0", "v = F.relu(v - 0.5)", "v = F.exp(v * 0.1)",
                          "v = F.tanh(v) * v"])
    if kind == "arith":  # what opt_level >= 1 rewrites, at the shapes each call has
        opts = ["v = v * 1", "v = v + (v - v)", "v = (v + 0) * v"]
        if pos:
            opts.append("v = v * (v / v)")
        return pick(rng, opts)
    if kind == "pair":
        if pair is None:
            return None
        return pair + "\n" + pick(rng, ["v = v * w", "v = v + w * 0.5", "v = F.maximum(v, w)"])
    if kind == "size":
        return pick(rng, [
            "h = h + v.sum() / («R:v».shape[0] + 1)",
            "z = F.zeros((«R:v».shape[0], 3)) + 1.0\nh = h + F.log(z.sum() + 1.0) * 0.1",
            "r = v.reshape(«R:v».shape[0], 1)\nh = h + F.tanh((r * r).sum() * 0.1)",
            "a = F.arange(«R:v».shape[0])\n"
            "h = h + (v * a).sum() / («R:v».shape[0] * «R:v».shape[0] + 1)",
            "v = F.concat([v, F.ones((2,))])",
            "h = h + F.tanh((v.reshape(«R:v».shape[0], 1) * F.ones((1, 3))).sum() * 0.05)",
            "h = h + F.tanh(F.broadcast_to(v.reshape(-1, 1), («R:v».shape[0], 2)).sum() * 0.1)",
        ])
    if kind == "python":  # a size as a Python value: a constant of the program
        return pick(rng, ["k = «P:int(«Q:v».shape[0])»\nh = h + math.log(k + 1) * 0.1",
                          "if «P:«Q:v».shape[0] > 3»:\n    h = h * 1.5\nelse:\n    h = h - 0.5"])
    opts = ["h = h + F.tanh(v.sum() * 0.1)", "h = h + F.log((v * v).sum() + 1.0) * 0.1",
            "h = h + F.tanh(F.concat([v, F.zeros((1,))]).max())"]
    if nonempty:
        opts += ["h = h + v.mean() * 0.1", "h = h + v.min()"]
    return pick(rng, opts)


_ABOVE = "c >= F.minimum(c.mean(), c.max()) * 0.9999995 - 1e-7"


def _channels(rng, st):
    """A mask on one axis (``h[:, mask]``): a value whose axis 1 data decides, and its uses."""
    if st.rank == 4:
        if rng.random() < 0.3:  # of the input: empty for data the checker chooses
            make = "g = x[:, x.mean(axis=(0, 2, 3)) > 0]"
            uses = ["h = h + F.tanh(g.sum() * 0.01)",
                    "h = h + F.zeros((«R:g».shape[1], 2)).sum() + «R:g».shape[1] * 0.1",
                    "k = «P:int(«Q:g».shape[1])»\nh = h + k * 0.1"]
            return make + "\n" + pick(rng, uses)
        # (the max is >= the min of mean and max, even where rounding puts the mean above
        # equal values: at least one channel is kept. Of |h|: other steps subtract channel
        # means, which leaves plain means to rounding noise, and a trace's rewrites round
        # differently from eager: a mask decided by noise is no engine bug. The threshold sits
        # 5e-7 relative (~4-8 float32 ulps) and 1e-7 absolute below that value: channels of
        # equal means (program 7280: a batch of one minus its batch mean, plus 0.5, makes
        # every mean 0.5) are then all kept, not split by one ulp of the rewritten
        # log(1 + h*h) -> log1p(h*h). Of programs 7000-7499, only 7337 (channels 1-2 ulps
        # below the mean) masks differently; a band of 0.1% moved channels that are merely
        # close, as normalizations make them, in 15 of 53 programs of 7000-7199)
        make = "c = F.abs(h).mean(axis=(0, 2, 3))\ng = h[:, " + _ABOVE + "]"
    else:
        make = "c = F.abs(h).mean(0)\ng = h[:, " + _ABOVE + "]"
    uses = ["h = h + g.mean(1, keepdims=True)",
            "h = h + g.sum(1, keepdims=True) / «R:g».shape[1]",
            "h = h * F.sigmoid(g.max(1, keepdims=True))",
            "h = h + (g * 1 - g).sum(1, keepdims=True) + g.sum(1, keepdims=True) / ("
            "«R:g».shape[1] + 1)",
            "if «P:«Q:g».shape[1] > 1»:\n    h = h + 0.5"]
    return make + "\n" + pick(rng, uses)


def step(rng, st):
    """A block that makes a value whose shape data decides, uses it 1-3 times and folds it into
    ``h`` (whose shape it leaves as it was)."""
    if rng.random() < 0.25:
        return _channels(rng, st)
    make, pos, nonempty, pair = _make(rng, st)
    lines, folded = [make], False
    for _ in range(int(rng.integers(1, 4))):
        u = _use(rng, pos, nonempty, pair)
        if u is None:
            continue
        if u.startswith("v = F.concat") or "h = " in u:
            pair = None  # (w would no longer have v's shape: v grew, or h changed)
        if "F.exp(v" in u:  # (which values stay positive: v / v is 1 only for those)
            pos = True
        elif "F.relu" in u or "v * w" in u:
            pos = False
        lines.append(u)
        folded = folded or u.lstrip().startswith(("h = ", "k = ", "if ", "z = ", "r = ", "a = "))
    if not folded:
        lines.append("h = h + F.tanh(v.sum() * 0.1)")
    return "\n".join(lines)
