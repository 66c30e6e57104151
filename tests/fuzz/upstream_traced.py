"""Networks drawn at random, traced with ``trace_module`` and then printed, searched, edited and
run on this checkout and on upstream MegEngine 1.13::

    python -m tests.fuzz.upstream_traced [--seeds N] [--start S] [--upstream PYTHON] [--show S]
                                         [--surgery]

Each seed writes a program (Python source; ``--show S`` prints seed S's): classes of blocks
(layers, fused layers, ``Sequential``, Parameters and buffers of their own, blocks of earlier
classes) whose ``forward`` runs drawn steps on an (N, 4, H, H) tensor (functions, operators,
tensor methods, slices, ``x.shape`` reads, in-place operators, a layer called twice; some
take a keyword argument or a second tensor, some return a tuple), a network holding them
directly, in a list, a dict or a ``Sequential`` and returning a tensor, a tuple, a list or a
dict, its weights seeded, a fifth of them converted with ``quantize_qat``, in eval mode,
traced on one input. Then drawn steps compare: every graph's print, every expr and node
(ids, kinds, names, qualified names, shapes, dtypes, what reads what, the inputs' users), the
searches (``get_function_by_type``, ``get_method_by_type``, ``get_module_by_type``,
``get_node_by_name``, ``get_node_by_id``, ``get_expr_by_id``, ``get_dep_exprs``),
``named_args``, ``repr``, the state dict and module names, outputs on the traced input and on
inputs of another batch and size, ``graph.eval``, end and watch points, the gradients of a
backward run twice, edits (an expr inserted after a drawn one with ``insert_exprs`` and put in
its place with ``replace_node``, then ``compile``, the old one kept by ``disable_remove`` or
not; ``add_output_node``, ``reset_outputs``), ``flatten``, ``pickle`` and ``mge.save`` round
trips (live, this side loads the file upstream's side wrote) and ``optimize``'s outputs.
``--surgery`` also draws edits that set a user module with submodules of its own on the
traced module and call it, or read through it, inside ``insert_exprs`` (`SURGERY_INSERTS`),
``expr.set_arg``, ``insert_exprs(expr)`` and ``expr.replace_inputs``.

Each program runs here and, with ``--upstream``, in upstream's interpreter
(tests/fuzz/both_engines.py by path); upstream is the oracle, compared as
tests/fuzz/both_engines.py says (values to float32 rounding: `PRELUDE` rounds them), and `rule`
counts the documented differences. Without ``--upstream`` the programs run here only (each must
build). CI compares this checkout with upstream's recorded results
(tests/fuzz/upstream_traced.json, ``--record FILE``)."""
import sys

import numpy as np

from tests.fuzz import both_engines as be

PRELUDE = '''
import pickle
import numpy as np
import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.quantization as Q
from megengine.autodiff import GradManager
from megengine.traced_module import optimize, trace_module
from megengine.traced_module.node import TensorNode
from megengine.traced_module.traced_module import TracedModule


def r(v):
    """Values rounded to 5 significant digits, containers as lists (dicts by sorted key); an
    array of more than 16 numbers as its shape, its first 8, the sum of its magnitudes and
    their sum weighted by position (so records stay small)."""
    if isinstance(v, dict):
        return [[k, r(v[k])] for k in sorted(v)]
    if isinstance(v, (list, tuple)):
        return [r(x) for x in v]
    if isinstance(v, mge.Tensor):
        v = v.numpy()
    if isinstance(v, (np.ndarray, float, int, np.generic)):
        a = np.asarray(v, "float64")
        if a.size > 16:
            flat = np.abs(a.ravel())
            return [list(a.shape), r(a.ravel()[:8]), r(flat.sum()),
                    r((flat * (1 + np.arange(a.size) % 7)).sum())]
        return np.vectorize(lambda x: float("%.5g" % x))(a).tolist()
    return repr(v)


def leaves(v):
    if isinstance(v, dict):
        return [x for k in sorted(v) for x in leaves(v[k])]
    if isinstance(v, (list, tuple)):
        return [x for item in v for x in leaves(item)]
    return [v] if isinstance(v, mge.Tensor) else []


def graphs(tm):
    """Every graph's print, the top graph's first."""
    return [str(tm.graph)] + [str(m.graph) for _, m in tm.named_modules()
                              if isinstance(m, TracedModule) and m is not tm
                              and m.argdef_graph_map]  # (a list or dict of modules has none)


KINDS = ("Input", "GetAttr", "Constant", "CallFunction", "CallMethod", "Apply")


def kind(e):
    """An expr's class among upstream's (this fork's ``x.shape`` is an Apply's subclass)."""
    return next(c.__name__ for c in type(e).__mro__ if c.__name__ in KINDS)


def exprs(tm):
    return [[e._id, kind(e), [n._id for n in e.inputs], [n._id for n in e.outputs],
             str(e)] for e in tm.graph.exprs(recursive=True)]


def node(n):
    if isinstance(n, TensorNode):
        return [n._id, n.name, n.qualname, "tensor", None if n.shape is None else list(n.shape),
                str(n.dtype)]
    return [n._id, n.name, n.qualname, type(n).__name__]


def nodes(tm):
    return [node(n) for n in tm.graph.nodes(recursive=True)]


def shown(items):
    return [str(x) for x in items]


def calls(graph):
    """The top graph's function and method calls that give one float32 tensor of one or more
    dims (no size; upstream 1.13's insert_exprs fails on a 0-d node's steps, and its tracing
    stays on after that error: the program's later steps hang there)."""
    return [e for e in graph.exprs(recursive=False)
            if type(e).__name__ in ("CallFunction", "CallMethod") and len(e.outputs) == 1
            and isinstance(e.outputs[0], TensorNode) and e.outputs[0].dtype == np.float32
            and e.outputs[0].shape]


def seeded(net, seed):
    rng = np.random.default_rng(seed)
    for _, p in sorted(net.named_parameters(), key=lambda kv: kv[0]):
        p.set_value(rng.uniform(-0.5, 0.5, p.shape).astype("float32"))
    for _, b in sorted(net.named_buffers(), key=lambda kv: kv[0]):
        if b.dtype == np.float32:
            b.set_value(rng.uniform(0.5, 1.5, b.shape).astype("float32"))


def grads(tm):
    """The largest gradient entry and each parameter's gradient divided by ten times it (sums
    through normalizations cancel: their float32 noise is small beside the largest entry,
    not beside each entry; compared within the fuzzer's 1e-5, 1e-4 of the largest entry)."""
    gs = [[name, None if p.grad is None else p.grad.numpy()] for name, p in tm.named_parameters()]
    top = max([float(np.abs(g).max()) for _, g in gs if g is not None and g.size] + [0.0]) or 1.0
    return [r(top)] + [[name, None if g is None else r(g / (10 * top))] for name, g in gs]


def weighted_squares(t):
    """The sum of t's squares, each weighted by its position (1 to 1 6/7): never a constant of
    the parameters, as a plain sum of squares of a normalized output is (its gradients then are
    float32 noise on both sides: programs 33994, 35376)."""
    w = (1 + np.arange(t.size) % 7 / 7).reshape(t.shape).astype("float32")
    return (t ** 2 * mge.tensor(w)).sum()


def backward_twice(tm, x):
    """`grads` of a GradManager backward of `weighted_squares` of ``tm(x)`` from no gradients,
    and whether a second such backward gave the same (upstream 1.13's does not always: `rule`)."""
    runs = []
    for _ in range(2):
        for p in tm.parameters():
            p.grad = None
        gm = GradManager().attach(tm.parameters())
        with gm:
            gm.backward(sum(weighted_squares(t) for t in leaves(tm(x))))
        runs.append(grads(tm))
    return runs[0] + [runs[0] == runs[1]]


def data(seed, shape):
    return mge.tensor(np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32"))
''' + be.SAVED_TWIN

# (every block keeps (N, 4, H, H))
LAYERS = ("M.Conv2d(4, 4, 3, padding=1)", "M.Conv2d(4, 4, 1, bias=False)", "M.BatchNorm2d(4)",
          "M.ReLU()", "M.Sigmoid()", "M.Identity()", "M.GroupNorm(2, 4)", "M.LeakyReLU(0.1)",
          "M.AvgPool2d(3, 1, 1)", "M.MaxPool2d(3, 1, 1)", "M.ConvBn2d(4, 4, 1)",
          "M.ConvBnRelu2d(4, 4, 3, padding=1)", "M.Sequential(M.Conv2d(4, 4, 1), M.ReLU())",
          "M.Dropout(0.3)", "M.ConvRelu2d(4, 4, 1)", "M.Conv2d(4, 4, 3, padding=1, groups=2)",
          "M.InstanceNorm(4)", "M.PReLU(4)", "M.SiLU()", "M.GELU()")
FUNCS = ("h = F.relu(h)", "h = F.sigmoid(h) * h", "h = h + x", "h = h * 0.5 + 1",
         "h = F.clip(h, -1.0, 1.0)", "h = h - h.mean(axis=1, keepdims=True)",
         "h = F.concat([h[:, :2], h[:, 2:] * 2], axis=1)", "h = h.transpose(0, 1, 3, 2)",
         "h = F.leaky_relu(h, 0.2)", "h = h.reshape(h.shape[0], 4, -1).reshape(x.shape)",
         "h = F.max(h, axis=1, keepdims=True) + h",
         "a, b = F.split(h, 2, axis=1)\nh = F.concat([b, a], axis=1)",
         "h = F.where(h > 0, h, h * 0.1)", "h = h ** 2", "h = -h", "h += 1", "h *= 0.5",
         "h = F.softmax(h, axis=1)", "h = F.tanh(h)", "h = h.astype('float32') / 2",
         "h = F.broadcast_to(h.mean(axis=1, keepdims=True), h.shape) * 0.5 + h",
         "h = F.matmul(h, h.transpose(0, 1, 3, 2)) * 0.1", "h = F.abs(h) - F.exp(-F.abs(h))",
         "h = h * F.expand_dims(h.mean(axis=(2, 3)), [2, 3])",
         "h = F.flatten(h, 2).reshape(h.shape)", "h = h / (h.shape[2] * 1.0)",
         "h = F.nn.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))[:, :, 1:-1, 1:-1]",
         "h = F.stack([h, x], axis=0).sum(axis=0)", "h = F.maximum(h, x) - F.minimum(h, 0.0)",
         "h = h.flatten().reshape(x.shape[0], -1).reshape(h.shape)", "h = F.log(F.exp(h) + 1)",
         "h = F.adaptive_avg_pool2d(h, (h.shape[2], h.shape[3]))", "h = h[:, ::-1]",
         "h = F.nn.interpolate(h[:, :, ::2, ::2], size=(h.shape[2], h.shape[3]))",
         "h = F.mean(h, axis=0, keepdims=True) + h")
# layer functions real networks call (traced as CallFunction exprs of their qualified names)
FUNCS += ("h = F.gelu(h) + F.silu(h)", "h = F.hswish(h) * F.hsigmoid(h)",
          "h = F.relu6(h * 3.0) + F.softplus(h) - F.logsigmoid(h)",
          "h = F.nn.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)), mode='reflect')[:, :, 1:-1, 1:-1]",
          "h = F.pixel_shuffle(F.concat([h, h * 0.5, h * 0.25, -h], axis=1), 2)[:, :, ::2, ::2]",
          "h = F.conv2d(h, F.ones((4, 1, 1, 3, 3)) / 9.0, padding=1, groups=4)",
          "h = F.conv_transpose2d(h, F.ones((4, 4, 2, 2)) * 0.1, stride=2)[:, :, ::2, ::2]",
          "h = F.local_response_norm(h, 3)", "h = F.cumsum(h, axis=3) * 0.1",
          "h = F.normalize(h, axis=1)", "h = h - F.logsumexp(h, axis=1, keepdims=True)",
          "h = F.sliding_window(h, 3, padding=1).mean(axis=(4, 5))",
          "h = F.nn.instance_norm(h, False) + F.nn.group_norm(h, 2, False)",
          "h = h * F.sigmoid(F.adaptive_avg_pool2d(h, 1))")
WITH_OWN = ("h = h * self.p", "h = h + self.buf", "h = F.conv2d(h, self.w)",
            "h = h * self.p + self.buf")


# (values kept in the domain of what reads them: a negated exp read by a log gives NaN, which
# upstream 1.13's vectorised exp turns into 2.4e38, docs/compatibility.rst)
INSERTS = ("F.neg(F.neg(n)) * 0.5", "n * 2.0", "F.relu(n) + n", "n.mean(axis=1, keepdims=True) + n")


# ``--surgery``: a user module with submodules of its own (one its forward never calls) set on
# the traced module and called, or read through, inside insert_exprs (upstream's
# test_insert_module reads ``self_node.neg.relu`` after calling ``self_node.neg``)
WRAP = """class Wrap(M.Module):
    def __init__(self):
        super().__init__()
        self.a = M.PReLU()
        self.b = M.Sigmoid()
        self.c = M.ReLU()
    def forward(self, x):
        return self.a(x) * 0.5"""
SURGERY_INSERTS = ("w(n)", "w.b(w(n))", "w.b(n) * 2.0", "w(n) * w.a.weight", "w.c(w.a(n))",
                   "w(w.b(n))", "w(n) + w(n * 0.5)", "w.a(n) + w.a.weight + w.a.weight",
                   "w.b(n) + w(n)")


class Draw:
    def __init__(self, seed, surgery=False):
        self.seed, self.surgery, self.wrapped = seed, surgery, set()
        self.rng = np.random.default_rng(seed)
        self.classes = []  # (name, how it is called: "plain", "kw", "two", "tuple")

    def pick(self, items):
        return items[int(self.rng.integers(len(items)))]

    def block(self):
        """A block class's source; its name and call kind go into self.classes."""
        name = f"B{len(self.classes)}"
        kind = self.pick(["plain", "plain", "kw", "two", "tuple"])
        init, body, n = [], [], 0
        own = self.rng.random() < 0.4
        if own:
            init += ["self.p = mge.Parameter(np.ones((1, 4, 1, 1), 'float32'))",
                     "self.buf = mge.Tensor(np.ones((1, 4, 1, 1), 'float32'))",
                     "self.w = mge.Parameter(np.ones((4, 4, 1, 1), 'float32'))"]
        for _ in range(int(self.rng.integers(2, 7))):
            r = self.rng.random()
            if r < 0.35:
                layer = f"l{n}"
                n += 1
                init.append(f"self.{layer} = {self.pick(LAYERS)}")
                body.append(f"h = self.{layer}(h)" if self.rng.random() < 0.85
                            else f"h = self.{layer}(self.{layer}(h))")
            elif r < 0.5 and self.classes:
                cls, ckind = self.pick(self.classes)
                layer = f"l{n}"
                n += 1
                init.append(f"self.{layer} = {cls}()")
                body.append(self.call(f"self.{layer}", ckind))
            elif r < 0.6 and own:
                body.append(self.pick(WITH_OWN))
            else:
                body.append(self.pick(FUNCS))
        args = {"plain": "x", "kw": "x, scale=1.0", "two": "x, y", "tuple": "x"}[kind]
        if kind == "kw":
            body.append("h = h * scale")
        elif kind == "two":
            body.append("h = h + y")
        ret = "h, h.mean()" if kind == "tuple" else "h"
        lines = [f"class {name}(M.Module):", "    def __init__(self):",
                 "        super().__init__()"] + ["        " + s for s in init]
        lines += [f"    def forward(self, {args}):", "        h = x"]
        lines += ["        " + s.replace("\n", "\n        ") for s in body]
        lines.append(f"        return {ret}")
        self.classes.append((name, kind))
        return "\n".join(lines)

    def call(self, obj, kind):
        if kind == "kw":
            return f"h = {obj}(h, scale={self.pick(['0.5', '2.0'])})"
        if kind == "two":
            return f"h = {obj}(h, x)"
        if kind == "tuple":
            return f"h, s = {obj}(h)\nh = h + s"
        return f"h = {obj}(h)"

    def net(self):
        init, body = [], []
        for i in range(int(self.rng.integers(1, 4))):
            cls, kind = self.pick(self.classes)
            how = self.rng.random()
            if how < 0.5:
                init.append(f"self.b{i} = {cls}()")
                body.append(self.call(f"self.b{i}", kind))
            elif how < 0.7:
                plain = [c for c, k in self.classes if k == "plain"]
                items = [f"{self.pick(plain)}()" if plain and self.rng.random() < 0.6 else
                         self.pick(LAYERS) for _ in range(int(self.rng.integers(1, 4)))]
                init.append(f"self.s{i} = M.Sequential({', '.join(items)})")
                body.append(f"h = self.s{i}(h)")
            elif how < 0.85:
                init.append(f"self.bs{i} = [{cls}(), {self.pick(LAYERS)}]")
                body.append(self.call(f"self.bs{i}[0]", kind) + f"\nh = self.bs{i}[1](h)")
            else:
                init.append(f"self.d{i} = {{'k': {cls}(), 'a': {self.pick(LAYERS)}}}")
                body.append(self.call(f"self.d{i}['k']", kind) + f"\nh = self.d{i}['a'](h)")
            if self.rng.random() < 0.3:
                body.append(self.pick(FUNCS))
        head = self.rng.random() < 0.4
        if head:
            init.append("self.fc = M.Linear(4, 3)")
            body.append("h = self.fc(h.mean(axis=(2, 3)))")
        ret = self.pick(["h", "h", "(h, x)", "[h, h.sum()]", "{'y': h, 'm': h.mean()}",
                         "{'out': h, 'aux': {'x': x}}"])
        lines = ["class Net(M.Module):", "    def __init__(self):",
                 "        super().__init__()"] + ["        " + s for s in init]
        lines += ["    def forward(self, x):", "        h = x"]
        lines += ["        " + s.replace("\n", "\n        ") for s in body]
        lines.append(f"        return {ret}")
        return "\n".join(lines)

    def build(self):
        blocks = [self.block() for _ in range(int(self.rng.integers(1, 4)))]
        size = self.pick([4, 6])
        # (a fifth of the networks converted to QAT first, drawn from a stream of its own: the
        # other programs are those drawn before)
        qat = np.random.default_rng([self.seed, 5]).random() < 0.2
        lines = blocks + [WRAP] * self.surgery + [self.net(), "net = Net()",
                                                   f"seeded(net, {self.seed})"]
        lines += ["Q.quantize_qat(net)"] if qat else []
        lines += ["net.eval()", f"x = data({self.seed}, (2, 4, {size}, {size}))",
                  "tm = trace_module(net, x)",
                  f"x2 = data({self.seed + 1}, (3, 4, {size + 2}, {size + 2}))"]
        return "\n".join(lines)

    def step(self):
        k = int(self.rng.integers(1000))
        if self.surgery and self.rng.random() < 0.2:
            return self.pick([
                # an argument set by name (the first float one of a drawn call; not of a
                # traced submodule's call, whose named_args here are its forward's, where
                # upstream's are Module.forward's ``inputs``, or raise)
                "cs = [c for c in calls(tm.graph)\n"
                "      if not isinstance(getattr(c.inputs[0], 'owner', None), TracedModule)]\n"
                f"e = cs[{k} % len(cs)] if cs else None\n"
                "named = [k for k, v in e.named_args.items() if type(v) is float] if cs else []\n"
                f"if named:\n    e.set_arg(named[0], {k % 5 / 4 + 0.25})\n"
                "out = [graphs(tm), r(tm(x)), sorted(e.named_args) if cs else None]",
                # steps inserted right after a drawn call, then read by its users
                f"e = calls(tm.graph)[{k} % len(calls(tm.graph))]\nn = e.outputs[0]\n"
                "with tm.graph.insert_exprs(e):\n    y = F.relu(n) * 0.5 + n\n"
                "tm.graph.replace_node({n: y})\ntm.graph.compile()\n"
                "out = [graphs(tm), nodes(tm), r(tm(x))]",
                # a later call made to read an earlier call's result instead of its own input
                f"cs = calls(tm.graph)\nlate = cs[{k} % len(cs)]\n"
                "old = next(i for i in late.inputs if isinstance(i, TensorNode))\n"
                "early = [c for c in cs[:cs.index(late)] if c.outputs[0].shape == old.shape]\n"
                "if early:\n    late.replace_inputs({old: early[0].outputs[0]})\n"
                "    tm.graph.compile()\nout = [graphs(tm), nodes(tm), r(tm(x))]",
            ])
        if self.surgery and self.rng.random() < 0.4:
            # (a fresh attribute each time: upstream names the graph of a module set again
            # under a name an earlier edit traced Net_wrap<k>_1, not followed here)
            while k in self.wrapped:
                k += 1
            self.wrapped.add(k)
            return (f"e = calls(tm.graph)[{k} % len(calls(tm.graph))]\nn = e.outputs[0]\n"
                    f"tm.wrap{k} = Wrap()\nseeded(tm.wrap{k}, {k})\n"
                    f"with tm.graph.insert_exprs():\n    w = tm.graph.inputs[0].wrap{k}\n"
                    f"    y = {SURGERY_INSERTS[k % len(SURGERY_INSERTS)]} + n\n"
                    "tm.graph.replace_node({n: y})\ntm.graph.compile()\n"
                    "out = [graphs(tm), nodes(tm), r(tm(x)), sorted(tm.state_dict()),\n"
                    "       [n for n, _ in tm.named_modules()]]")
        return self.pick([
            "out = graphs(tm)", "out = exprs(tm)", "out = nodes(tm)", "out = r(tm(x))",
            "out = r(tm(x2))", "out = r(tm.graph.eval(x))", "out = repr(tm)",
            "out = [sorted(tm.state_dict()), [n for n, _ in tm.named_modules()]]",
            "out = [shown(tm.graph.get_function_by_type(F.relu).as_list()), "
            "shown(tm.graph.get_method_by_type('__add__').as_list()), "
            "shown(tm.graph.get_module_by_type(M.Conv2d).as_list()), "
            "shown(tm.graph.get_function_by_type().as_list())]",
            "out = [node(n) for n in tm.graph.get_node_by_name('*out*').as_list()]",
            f"out = shown(tm.graph.get_expr_by_id([{k % 7}, {k % 13}, {k % 29}]).as_list())",
            "out = shown(tm.graph.get_dep_exprs(tm.graph.outputs[:1]))",
            f"e = calls(tm.graph)[{k} % len(calls(tm.graph))]\nn = e.outputs[0]\n"
            f"with tm.graph.insert_exprs():\n    y = {INSERTS[k % len(INSERTS)]}\n"
            "tm.graph.replace_node({n: y})\ntm.graph.compile()\nout = [graphs(tm), r(tm(x))]",
            f"e = calls(tm.graph)[{k} % len(calls(tm.graph))]\nn = e.outputs[0]\n"
            "with tm.graph.insert_exprs():\n    y = F.abs(n) + n\n"
            "tm.graph.replace_node({n: y})\ne.disable_remove()\ntm.graph.compile()\n"
            "out = [graphs(tm), r(tm(x))]",
            "out = [[str(e), sorted([k, str(v)] for k, v in e.named_args.items())]\n"
            "       for e in tm.graph.exprs() if type(e).__name__ == 'CallFunction']",
            f"e = calls(tm.graph)[{k} % len(calls(tm.graph))]\n"
            "tm.graph.add_output_node(e.outputs[0])\nout = [graphs(tm), r(tm(x))]",
            "f = tm.flatten()\nout = [graphs(f), exprs(f), r(f(x2))]",
            "tm = pickle.loads(pickle.dumps(tm))\nout = [graphs(tm), nodes(tm), r(tm(x))]",
            "tm = saved_twin(tm)\nout = [graphs(tm), nodes(tm), r(tm(x2))]",
            "out = [[node(n), shown(n.users)] for n in tm.graph.inputs]",
            f"out = [node(n) for n in tm.graph.get_node_by_id([{k % 11}, {k % 23}]).as_list()]",
            f"e = calls(tm.graph)[{k} % len(calls(tm.graph))]\n"
            "tm.set_end_points([e.outputs[0]])\nout = r(tm(x))\ntm.clear_end_points()",
            f"e = calls(tm.graph)[{k} % len(calls(tm.graph))]\n"
            "tm.set_watch_points([e.outputs[0]])\ntm(x)\n"
            "out = [[node(n), r(v)] for n, v in tm.watch_node_value.items()]\n"
            "tm.clear_watch_points()",
            "tm.graph.reset_outputs(tm.graph.outputs[0])\nout = [graphs(tm), r(tm(x))]",
            "out = r(optimize(tm, 'FuseConvBn')(x))",
            "out = r(optimize(tm, ['FuseAddMul', 'FuseConvBn'])(x2))",
            "out = backward_twice(tm, x)",
            "out = [r(optimize(tm, 'BackwardFoldScale')(x2)), r(tm(x2))]",
            # a module added to the traced module, called through its graph's self node
            f"e = calls(tm.graph)[{k} % len(calls(tm.graph))]\nn = e.outputs[0]\n"
            f"tm.extra{k} = M.PReLU()\nseeded(tm.extra{k}, {k})\n"
            f"with tm.graph.insert_exprs():\n    y = tm.graph.inputs[0].extra{k}(n) + n\n"
            "tm.graph.replace_node({n: y})\ntm.graph.compile()\n"
            "out = [graphs(tm), nodes(tm), r(tm(x)), sorted(tm.state_dict())]",
            f"e = calls(tm.graph)[{k} % len(calls(tm.graph))]\n"
            f"e.outputs[0].name = 'picked{k % 3}'\nout = [graphs(tm), nodes(tm)]",
            # an edit inside a block's own graph
            "subs = [m for _, m in tm.named_modules() if isinstance(m, TracedModule)\n"
            "        and m is not tm and m.argdef_graph_map and calls(m.graph)]\n"
            f"g = subs[{k} % len(subs)].graph if subs else tm.graph\n"
            f"e = calls(g)[{k} % len(calls(g))]\nn = e.outputs[0]\n"
            "with g.insert_exprs():\n    y = n * 2.0\n"
            "g.replace_node({n: y})\ng.compile()\nout = [graphs(tm), r(tm(x))]",
        ])

    def steps(self):
        return [self.step() for _ in range(int(self.rng.integers(4, 10)))]


SURGERY = [False]  # (``--surgery``)


def draw(seed):
    """The program of ``seed``: (build source, [step sources])."""
    d = Draw(seed, SURGERY[0])
    return d.build(), d.steps()


def rule(sources, i, mine, theirs):
    """The documented differences (docs/compatibility.rst, docs/api/traced_module.rst)."""
    m, t, source, build = mine[i], theirs[i], sources[i], sources[0]
    if ("FuseAddMul" in source or "BackwardFoldScale" in source) and \
            any(op in build for op in INPLACE):
        # upstream 1.13's FuseAddMul (which BackwardFoldScale runs too) turns an in-place
        # ``h += 1`` into ``h + 1``: a write into the caller's tensor (the input) is lost, so
        # the input holds other values on each side from here (also where this step's values
        # agree; seed 30259)
        return "stop", "upstream's FuseAddMul drops in-place writes"
    if ".compile()" in source and any(op in build for op in INPLACE) and \
            m[0] == t[0] == "ok" and _more_exprs_kept(m[1], t[1]):
        # this fork's compile keeps a traced submodule's call that writes in place into the
        # graph's input (``h += 1`` on the caller's ``x``: a write the call leaves behind,
        # docs/compatibility.rst) though no output needs it; upstream 1.13's drops it, so the
        # input holds other values from here (surgery seed 63947)
        return "stop", "compile keeps a call that writes into the graph's input"
    if m[0] == t[0] == "raise" and any(edit in source for edit in EDITS):
        # both refuse an edit, each at its own point: upstream 1.13 stops part way (seed
        # 32757: its compile raised KeyError for a name while removing exprs, keeping some
        # that this fork's finished compile removed), so the graphs differ from here
        return "stop", "both refuse an edit, at other points"
    if be.same(m, t, FUZZER.tol) or m[0] == t[0] == "raise":
        return None
    if "F.exp(" in build and m[0] == t[0] == "ok" and _overflowed(m[1], t[1]):
        # upstream 1.13's vectorised exp of a float32 value above ~88.7 gives 2.4e38, not inf
        # (docs/compatibility.rst; tests/fuzz/upstream_write.py): where an exp overflows here
        # (inf, then NaN downstream) upstream computes finite values (seed 5889's softplus)
        return "stop", "upstream's exp overflows to a finite value"
    if "BackwardFoldScale" in source and m[0] == t[0] == "ok" and \
            be.close(m[1][0], m[1][1], FUZZER.tol) and be.close(m[1][1], t[1][1], FUZZER.tol) \
            and not be.close(t[1][0], t[1][1], FUZZER.tol):
        # the optimized copy computes what the module does here; upstream 1.13's does not: its
        # BackwardFoldScale drops a multiplication of the graph's input (``x * 0.5 + 1``
        # becomes ``x + 1``; seeds 4, 22, 30, 59) or lets a max carry a negative scale
        return "count", "upstream's BackwardFoldScale changes the values"
    if "FuseConvBn" in source and "M.ConvRelu2d" in build:
        # upstream 1.13's FuseConvBn folds a batch norm that follows a ConvRelu2d into it,
        # across its ReLU (other values); here the batch norm stays (optimize makes a copy)
        return "count", "upstream folds a batch norm across ConvRelu2d's ReLU"
    if ("FuseConvBn" in source or "BackwardFoldScale" in source) and \
            "Q.quantize_qat(net)" in build and "M.BatchNorm2d(" in build:
        # upstream 1.13's FuseConvBn replaces a QAT convolution followed by a batch norm with a
        # float Conv2d of the folded weights, its fake quantization dropped (other values: seed
        # 37931, 0.0078 off); here the pair stays
        return "count", "upstream folds a QAT convolution's batch norm into a float one"
    if "backward_twice" in source and "MaxPool2d(3, 1, 1)" in build:
        # overlapping max-pooling windows give a tied maximum's gradient to the first one
        # (torch's); upstream 1.13 to every one (a stride-1 pool applied twice makes ties)
        return "stop", "overlapping max pooling's ties"
    if "backward_twice" in source and m[0] == t[0] == "ok" and m[1][-1] and not t[1][-1]:
        # upstream 1.13's backward of some of these networks gives other gradients in some
        # runs (1e10-1e34 at times: 4 runs of seed 63, eager and traced alike; 20 % off at
        # others: seed 27) where this fork's two runs agree
        return "stop", "upstream's gradient of another run"
    if "backward_twice" in source and m[0] == t[0] == "ok" and \
            0 < abs(m[1][0]) < np.finfo(np.float32).tiny and _all_zero(t[1][1:-1]):
        # every gradient here is subnormal (below 1.2e-38), which upstream 1.13's CPU kernels
        # flush to 0 (measured: 1e-40 * 1.0 gives 0 there; numpy and torch keep it): its
        # gradients are all 0 (surgery seed 50325 of f23c554a's draws: 1.8e-42 here)
        return "stop", "subnormal gradients: upstream flushes them to 0"
    if "backward_twice" in source and m[0] == t[0] == "ok" and \
            max(abs(m[1][0]), abs(t[1][0])) < 1e-5:
        # every gradient cancels to float32 noise of its terms (seed 45322: a softmax over
        # channels that a conv_transpose of equal weights then sums, whose gradient is 0
        # exactly: its largest entry 5.7e-7 here and 4.4e-7 upstream beside a loss of 900)
        return "count", "gradients that cancel to float32 noise"
    if m[0] == t[0] == "ok":
        return _rounding_residues(sources, i, m[1], t[1])
    return None


def _more_exprs_kept(mine, theirs):
    """Whether a step's graph prints (its first result) hold every line of upstream's and
    more: upstream's compile dropped exprs that this fork's kept."""
    if not (isinstance(mine, list) and isinstance(theirs, list) and mine and theirs
            and isinstance(mine[0], list) and isinstance(theirs[0], list)
            and len(mine[0]) == len(theirs[0])):
        return False
    pairs = [(set(a.split("\n")) - {"\t"}, set(b.split("\n")) - {"\t"})
             for a, b in zip(mine[0], theirs[0]) if isinstance(a, str) and isinstance(b, str)]
    return len(pairs) == len(mine[0]) and all(b <= a for a, b in pairs) and \
        any(a != b for a, b in pairs)


def _all_zero(value):
    """Whether every number in ``value`` (lists, [name, values] pairs) is 0."""
    if isinstance(value, list):
        return all(_all_zero(v) for v in value)
    return isinstance(value, str) or value is None or value == 0


INPLACE = ("h += 1", "h *= 0.5")
EDITS = ("replace_node(", ".compile()", "insert_exprs(", "reset_outputs(", "add_output_node(")


def _overflowed(mine, theirs):
    """Whether a value here is inf or NaN (JSON: its repr) where upstream's is a number."""
    if isinstance(mine, list) and isinstance(theirs, list):
        return any(_overflowed(a, b) for a, b in zip(mine, theirs))
    return mine in ("nan", "inf", "-inf") and isinstance(theirs, (int, float))


# Normalizations amplify float32 rounding, which neither engine has wrong, where what they
# divide by is small beside the values rounded: `rule` asks `_watched` (this side runs the
# program again, watched) where a step's values differ. Measured on (3, 4, 8, 8) groups of
# mean 0.1, 1 and 5 (20 draws each; group_norm and instance_norm against float64's):
#
# A group (group_norm, instance_norm, GroupNorm, InstanceNorm) whose standard deviation is
# below NEAR_CONSTANT times its largest magnitude (after a dead ReLU, a QAT convolution of zero
# output, a normalization of per-channel constants) is normalized as (x - mean) / sqrt(var +
# eps): its values' rounding, relative ~1e-7 to 1e-6 apart on the two sides, is multiplied by
# max|x| / std, over 1e3. Normalized values were off by up to 5.7e-5 (mean 1) and 2.4e-4 (mean
# 5) here, 1.5e-4 and 7.1e-4 upstream, at std / |mean| of 1e-3 and below (the fuzzer's atol is
# 1e-4); by 2.2e-5 here and 4.4e-5 upstream at 1e-2. Equal values give 0 here and residues
# upstream unless their sum divides exactly (5.65e-5 each: seed 41818). Seeds 31271, 31965,
# 34252, 34412, 35463, 36224, 37055, 37170, 37960, 38493, 38844, 39676, 41818, 42956 (a
# backward: 1 / sqrt(eps) of exactly constant groups) normalize such groups (std / max|x| 0 to
# 3e-5); this fork's values are float64's in 9, neither side's in the others.
NEAR_CONSTANT = 1e-3
# F.normalize's gradient is (g - y * sum(g * y)) / |x|: a row of norm below TINY_NORM (not 0)
# multiplies its rounding residue (~1e-7 |g|) by over 1e4. Seed 36600: a row with one nonzero
# entry, of norm 4.9e-5 (y = e_k, whose gradient is 0: this fork's and float64's are exactly
# 0 in every parameter; upstream's are the residue, 3.5e-3 at most, compared beside its
# largest).
TINY_NORM = 1e-4
# A sum of normalized values (``[h, h.sum()]`` after ``F.nn.instance_norm(h, False) + ...``) is 0
# but for rounding: each group's mean, rounded, shifts its values by ~1e-7 times kappa =
# |mean| / sqrt(var + eps), N of them summed. The sums of the 768 values were off float64's 0 by
# up to 8.2e-8 N kappa here and 2.4e-7 N kappa upstream where std / |mean| is 3e-3 or more
# (kappa 1 to 230). Numbers that differ but are below SUM_RESIDUE times N kappa (summed over
# the step's normalizations) on both sides are such residues: seeds 33184, 34810, 37292 (std /
# |mean| 0.1, 0.029, 0.0032; sums of 2.8e-4 to 1.6e-3 on each side within bounds of 1.4e-2 to
# 8.2e-2, float64's 1e-13).
SUM_RESIDUE = 1e-6
# Values beyond HUGE (squares of squares: ``h ** 2`` blocks nested 14 deep) cancel to float32
# residues of their own size, far beyond the fuzzer's atol: surgery seed 66230's ops see up to
# 3.5e18; it centres values of 5.8e12 (``h - h.mean(axis=1, keepdims=True)``) and sums the
# channels (a conv_transpose of equal weights), an output exactly 0 given as residues on each
# side (the sum of their magnitudes 2.7e6 here, 2.0e6 upstream). Numbers that differ but are
# within EPS32 * n * the largest magnitude on both sides (n: the largest input's size) are such
# residues where the step's ops saw magnitudes beyond HUGE (everything such a step computes
# from those values is compared no closer than that).
HUGE = 1e6
EPS32 = float(np.finfo(np.float32).eps)
_WATCHED = {}


def _rounding_residues(sources, i, mine, theirs):
    """The rule for a step whose values differ where its watched rerun (`_watched`) explains
    them: rounding residues of normalizations, or of values beyond HUGE cancelled."""
    seen = _watched(sources, i)
    if seen["constant"]:
        return "stop", "normalising nearly constant groups: rounding residues over sqrt(eps)"
    if seen["tiny_rows"]:
        return "stop", "normalising rows of tiny norm: rounding residues over the norm"
    if seen["sum_bound"] and _residues(mine, theirs, seen["sum_bound"]):
        return "stop", "sums of normalized values: rounding residues of their cancellation"
    if seen["largest"] > HUGE and _residues(mine, theirs, EPS32 * seen["size"] * seen["largest"]):
        return "stop", "values beyond 1e6 cancelled: float32 residues of their size"
    return None


def _residues(a, b, bound):
    """Whether every number that differs (beyond the fuzzer's tolerance) between two values is
    within ``bound`` of 0 on both sides, and nothing else differs."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_residues(x, y, bound) for x, y in zip(a, b))
    if be.close(a, b, FUZZER.tol):
        return True
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
        not isinstance(a, bool) and not isinstance(b, bool) and max(abs(a), abs(b)) <= bound


def _watched(sources, i):
    """What step ``i`` normalizes (`NEAR_CONSTANT`, `TINY_NORM`, `SUM_RESIDUE`) and how large
    its ops' inputs are (`HUGE`): {"constant": a group nearly constant, "tiny_rows": F.normalize
    of a row of tiny norm, "sum_bound": SUM_RESIDUE * N * kappa summed, "largest": the largest
    magnitude of a float input, "size": the largest input's size}. The program runs again here,
    from its build, in a namespace of its own (fresh objects: not the run whose values are
    compared, and trace_module's patches of functions while it traces are done by then), the
    ops' forwards watched in step ``i`` only; where the build raises nothing is seen."""
    key = be.digest(sources[:i + 1])
    if key not in _WATCHED:
        _WATCHED[key] = _watch(sources, i)
    return _WATCHED[key]


def _watch(sources, i):
    import warnings

    from megengine.core import dispatch
    from megengine.functional.math import Normalize
    from megengine.functional.normalization import _Normalize
    from tests.devices import host  # (numpy or, on a GPU, CuPy arrays)

    seen, on = {"constant": False, "tiny_rows": False, "sum_bound": 0.0, "largest": 0.0,
                "size": 0}, [False]
    groups_forward, rows_forward = _Normalize.forward, Normalize.forward

    def groups(op, x, *params):
        if on[0]:
            try:
                a = host(x).astype("float64")
                g = a.reshape([int(v) for v in op.view])  # (N, groups, -1) or (rows, M)
                top, var = np.abs(g).max(-1), g.var(-1)
                seen["constant"] |= bool(((top > 0) & (np.sqrt(var) < NEAR_CONSTANT * top)).any())
                kappa = np.abs(g.mean(-1)) / np.sqrt(var + op.eps)
                seen["sum_bound"] += SUM_RESIDUE * a.size * max(1.0, float(kappa.max()))
            except Exception:  # noqa: BLE001  (not a plain array: not watched)
                pass
        return groups_forward(op, x, *params)

    def rows(op, x):
        y = rows_forward(op, x)
        if on[0]:
            try:
                norm = np.sqrt((host(x).astype("float64") ** 2).sum(axis=tuple(op.axes)))
                seen["tiny_rows"] |= bool(((norm > 0) & (norm < TINY_NORM)).any())
            except Exception:  # noqa: BLE001
                pass
        return y

    def sizes(op, inputs):  # (the dispatcher's op hook, as TensorSanityCheck's)
        dispatch._profile_hook = None
        try:
            for t in inputs:
                a = host(t._data)
                if a.dtype.kind == "f" and a.size:  # (finite values: an inf bounds nothing)
                    seen["size"] = max(seen["size"], a.size)
                    top = np.abs(a[np.isfinite(a)]).max(initial=0)
                    seen["largest"] = max(seen["largest"], float(top))
            return dispatch.apply(op, *inputs)
        finally:
            dispatch._profile_hook = sizes if on[0] else None

    ns = {"__name__": "fuzzed_program", "TAG": be.digest([sources[0], sources[1:]])[6:18]}
    _Normalize.forward, Normalize.forward = groups, rows
    try:
        with be.QuietLogs(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for j, source in enumerate([PRELUDE + sources[0]] + list(sources[1:i + 1])):
                on[0] = j == i
                dispatch._profile_hook = sizes if on[0] else None
                ns["out"] = None
                try:
                    exec(compile(source, f"<step {j}>", "exec"), ns)
                except Exception:  # noqa: BLE001  (as `be.run`: a step that raises, the next)
                    if j == 0:
                        break
    finally:
        _Normalize.forward, Normalize.forward = groups_forward, rows_forward
        dispatch._profile_hook = None
        ns.clear()
    return seen


def texts_as_digests(value):
    """``value`` with its texts of over 40 characters (graph prints) as digests."""
    if isinstance(value, list):
        return [texts_as_digests(v) for v in value]
    return be.digest(value) if isinstance(value, str) and len(value) > 40 else value


def keep(source):
    """What a record keeps of a step's value: numbers whole (compared within the tolerance),
    long texts as digests; other steps' values are digests whole."""
    return texts_as_digests if "r(" in source or "backward_twice" in source else False


# atol: a network's output summed (``h.sum()`` of a mean-centred h, hundreds of terms of
# magnitude ~1) cancels to about 0 give or take float32 rounding, 2e-4 at worst for 768 terms
# of magnitude 5 (seed 5360: 1.5e-5 here, -7.6e-6 upstream)
FUZZER = be.Fuzzer("python -m tests.fuzz.upstream_traced", draw, PRELUDE, rule, keep=keep,
                   tol=(1e-3, 1e-4), shared_folder=True)


if __name__ == "__main__":
    SURGERY[0] = "--surgery" in sys.argv
    sys.exit(FUZZER.main([a for a in sys.argv[1:] if a != "--surgery"], __doc__))
