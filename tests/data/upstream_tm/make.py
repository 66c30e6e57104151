"""Make the upstream TracedModule files of tests/data/upstream_tm (needs an upstream MegEngine).

This script writes the files with upstream MegEngine 1.13 installed (it is the oracle):
``python make.py OUTDIR``; tests/traced_module/test_tracer.py imports its modules and graph
edits to make the same graphs here. For each case it writes ``<case>.tm`` (the
TracedModule saved with ``megengine.save``), ``<case>.npz`` (``inputs``: the call's tensor
arguments ``in0``, ``in1``, ...; its outputs ``out0``, ...; a dict's values by sorted key; ``call``: how to call it, JSON) and ``<case>.txt`` (upstream's
``print(tm.graph)`` of the file loaded). ``python make.py OUTDIR CASE ...`` writes those cases
only.
"""
import json
import os
import sys

import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.traced_module import trace_module


class ConvNet(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 4, 3, padding=1)
        self.bn = M.BatchNorm2d(4)
        self.fc = M.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(F.flatten(x, 1)) * 2 + 1


class BasicBlock(M.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = M.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = M.BatchNorm2d(cout)
        self.conv2 = M.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = M.BatchNorm2d(cout)
        self.downsample = M.Sequential(M.Conv2d(cin, cout, 1, stride, bias=False),
                                       M.BatchNorm2d(cout))

    def forward(self, x):
        identity = self.downsample(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return F.relu(x + identity)


class ResNetTiny(M.Module):
    def __init__(self):
        super().__init__()
        self.stem = M.Conv2d(3, 4, 3, 1, 1)
        self.block = BasicBlock(4, 8, 2)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.block(F.relu(self.stem(x))), 1)


class MobileBlock(M.Module):
    def __init__(self):
        super().__init__()
        self.expand = M.Conv2d(4, 8, 1)
        self.dw = M.Conv2d(8, 8, 3, padding=1, groups=8)
        self.project = M.Conv2d(8, 4, 1)
        self.act = M.ReLU6() if hasattr(M, "ReLU6") else None

    def forward(self, x):
        y = F.relu6(self.expand(x))
        y = F.hswish(self.dw(y))
        return x + self.project(y)


class Attention(M.Module):
    def __init__(self, d=8, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = M.Linear(d, 3 * d)
        self.proj = M.Linear(d, d)
        self.norm = M.LayerNorm(d)

    def forward(self, x):
        b, n, d = x.shape
        h = self.norm(x)
        qkv = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = F.softmax(F.matmul(q, k, transpose_b=True) / (d // self.heads) ** 0.5, axis=-1)
        y = F.matmul(att, v).transpose(0, 2, 1, 3).reshape(b, n, d)
        return x + self.proj(y)


class TensorOps(M.Module):
    def forward(self, x, y):
        a = x.reshape(2, -1).transpose(1, 0)
        b = x[:, 1:3] * y[:, 1:3, 0:1] / 2.0 - x[0, 0]
        c = F.concat([a, a * 3], axis=1)
        p, q = F.split(c, 2, axis=1)
        return p + q.sum(axis=1, keepdims=True), b.mean(), x.astype("float16").astype("float32")


class Containers(M.Module):
    def __init__(self):
        super().__init__()
        self.seq = M.Sequential(M.Linear(4, 6), M.ReLU(), M.Linear(6, 4))
        self.layers = [M.Linear(4, 4), M.Linear(4, 4)]
        self.heads = {"a": M.Linear(4, 2), "b": M.Linear(4, 3)}

    def forward(self, x):
        x = self.seq(x)
        for layer in self.layers:
            x = F.relu(layer(x))
        return {"a": self.heads["a"](x), "b": self.heads["b"](x)}


class Constants(M.Module):
    def __init__(self):
        super().__init__()
        self.fc = M.Linear(4, 4)

    def forward(self, x, scale, mode="add"):
        offset = mge.tensor(np.arange(4, dtype="float32"))
        y = self.fc(x) * scale
        if mode == "add":
            y = y + offset
        return F.clip(y, -1.5, 1.5)


class KwArgs(M.Module):
    def __init__(self):
        super().__init__()
        self.fc = M.Linear(4, 3)

    def forward(self, x, *, bias=None, alpha=0.5):
        y = self.fc(x) * alpha
        return y + bias if bias is not None else y


class Inner(M.Module):
    def __init__(self):
        super().__init__()
        self.fc = M.Linear(4, 4)

    def forward(self, x):
        return F.sigmoid(self.fc(x)) + x


class Outer(M.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.inner2 = Inner()
        self.out = M.Linear(4, 2)

    def forward(self, x):
        return self.out(self.inner2(self.inner(x)))


class Recurrent(M.Module):
    def __init__(self):
        super().__init__()
        self.lstm = M.LSTM(4, 3, batch_first=True)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return out, h, c


class QNet(M.Module):
    def __init__(self):
        super().__init__()
        self.quant = M.QuantStub()
        self.conv = M.ConvBnRelu2d(3, 4, 3, padding=1)
        self.fc = M.Linear(4 * 6 * 6, 3)
        self.dequant = M.DequantStub()

    def forward(self, x):
        x = self.conv(self.quant(x))
        return self.dequant(self.fc(F.flatten(x, 1)))


class TwoCalls(M.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = M.Linear(4, 3), M.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) + self.fc2(x) * 2


class Items(M.Module):
    def __init__(self):
        super().__init__()
        self.d0 = {"k": M.ReLU(), "a": M.Identity()}

    def forward(self, x):
        return self.d0["a"](self.d0["k"](x)) * 2


def layer_added_last(tm):
    """A PReLU on the last result, added after tracing (self's users: the items' merged
    getattrs, then the new layer's)."""
    n = tm.graph._exprs[-1].outputs[0]
    tm.extra = M.PReLU()
    with tm.graph.insert_exprs():
        y = tm.graph.inputs[0].extra(n) + n
    tm.graph.replace_node({n: y})
    tm.graph.compile()
    return tm


def flattened(tm):
    return tm.flatten()


def call_added_first(tm):
    """A third call on x, put before the others in the graph (and last among x's users)."""
    x = tm.graph.inputs[1]
    tm.extra = M.Linear(4, 3)
    with tm.graph.insert_exprs(tm.graph._exprs[0]):
        y = tm.graph.inputs[0].extra(x)
    out = tm.graph.outputs[0]
    with tm.graph.insert_exprs():
        z = out + y.sum()
    tm.graph.replace_node({out: z})
    tm.graph.compile()
    return tm


def rand(*shape):
    return mge.tensor(np.random.rand(*shape).astype("float32") - 0.5)


def cases():
    yield "convnet", ConvNet(), (rand(2, 3, 8, 8),), {}, None
    yield "resblock", ResNetTiny(), (rand(2, 3, 8, 8),), {}, None
    yield "mobile", MobileBlock(), (rand(1, 4, 6, 6),), {}, None
    yield "attention", Attention(), (rand(2, 5, 8),), {}, None
    yield "tensor_ops", TensorOps(), (rand(2, 4, 3), rand(2, 4, 3)), {}, None
    yield "containers", Containers(), (rand(3, 4),), {}, None
    yield "constants", Constants(), (rand(3, 4), 3.0), {"mode": "add"}, None
    yield "kwargs", KwArgs(), (rand(2, 4),), {"bias": rand(3), "alpha": 2.0}, None
    yield "lstm", Recurrent(), (rand(2, 5, 4),), {}, None
    yield "nested", Outer(), (rand(3, 4),), {}, None
    yield "nested_flat", Outer(), (rand(3, 4),), {}, flattened
    yield "edited", TwoCalls(), (rand(2, 4),), {}, call_added_first
    yield "edited_items", Items(), (rand(2, 4),), {}, layer_added_last
    from megengine.quantization import quantize_qat, quantize
    qat = quantize_qat(QNet())
    yield "qat", qat, (rand(2, 3, 6, 6),), {}, None
    q = quantize_qat(QNet())
    yield "quantized", quantize(q), (rand(2, 3, 6, 6),), {}, None


def main(outdir, only=()):
    os.makedirs(outdir, exist_ok=True)
    for name, net, args, kwargs, after in cases():
        if only and name not in only:
            continue
        np.random.seed(1)
        net.eval()
        try:
            tm = trace_module(net, *args, **kwargs)
            if after is not None:
                tm = after(tm)
            out = tm(*args, **kwargs)
        except Exception as e:
            print(name, "FAILED", type(e).__name__, e)
            continue
        outs = out if isinstance(out, (tuple, list)) else (
            [out[k] for k in sorted(out)] if isinstance(out, dict) else [out])
        arrays = {f"in{i}": a.numpy() for i, a in enumerate(args) if isinstance(a, mge.Tensor)}
        arrays.update({f"kw_{k}": v.numpy() for k, v in kwargs.items() if isinstance(v, mge.Tensor)})
        call = {"args": [["t", f"in{i}"] if isinstance(a, mge.Tensor) else ["v", a]
                         for i, a in enumerate(args)],
                "kwargs": {k: ["t", f"kw_{k}"] if isinstance(v, mge.Tensor) else ["v", v]
                           for k, v in kwargs.items()}}
        arrays["call"] = np.array(json.dumps(call))
        arrays.update({f"out{i}": o.numpy() for i, o in enumerate(outs)})
        mge.save(tm, os.path.join(outdir, name + ".tm"))
        np.savez(os.path.join(outdir, name + ".npz"), **arrays)
        with open(os.path.join(outdir, name + ".txt"), "w") as f:  # (as loaded: ids renumbered)
            f.write(str(mge.load(os.path.join(outdir, name + ".tm")).graph) + "\n")
        print(name, "ok", os.path.getsize(os.path.join(outdir, name + ".tm")))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".", sys.argv[2:])
