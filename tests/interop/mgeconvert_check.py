"""mgeconvert 1.0.2 (MegEngine's model converter) on this fork's files: an end-to-end check.

Not part of the suite (mgeconvert, onnx and onnxruntime are not dependencies). It dumps five nets
with ``trace(symbolic=True, capture_as_const=True).dump`` and traces them with
``trace_module``, converts them with mgeconvert's ``mge_to_onnx``, ``tracedmodule_to_onnx``,
``onnx_to_mge`` and ``onnx_to_tracedmodule``, runs the results (onnxruntime, ``GraphInference``,
the loaded TracedModule) and compares them with this fork's eager outputs. Each case has an
expected outcome: converted and equal, or one of mgeconvert 1.0.2's own limits (see the
mgeconvert paragraph of docs/compatibility.rst). It exits 1 when a case expected to convert does
not, or a limit went away (update the table then).

Set up (mgeconvert's sdist; its setup.py writes ``mgeconvert/__init__.py`` at install time
from the converters chosen, the shipped one imports the TFLite converters: empty it, the check
imports the converters' modules directly)::

    pip download --no-deps mgeconvert==1.0.2 && tar xzf mgeconvert-1.0.2.tar.gz
    : > mgeconvert-1.0.2/mgeconvert/__init__.py
    pip install --target /tmp/mgec-deps onnx onnxruntime protobuf onnxoptimizer onnxsim
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python \\
        PYTHONPATH=$PWD:$PWD/mgeconvert-1.0.2:/tmp/mgec-deps \\
        python tests/interop/mgeconvert_check.py

mgeconvert 1.0.2 needs three check-only patches on Python 3.10+ and numpy 2, applied here in
memory (its files are not changed): ``collections.Iterable`` (gone in Python 3.10), its ONNX
dtype table keyed by numpy scalar types (a graph var's dtype is an ``np.dtype``, as upstream's),
and Softmax's axis, which its ONNX writer leaves out and its ONNX reader requires.
"""
import collections
import collections.abc
import os
import sys
import tempfile

import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.traced_module as tm
from megengine.jit import trace
from megengine.utils.comp_graph_tools import GraphInference

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))


class SmallCNN(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 8, 3, padding=1)
        self.bn = M.BatchNorm2d(8)
        self.pool = M.MaxPool2d(2)
        self.avg = M.AvgPool2d(2)
        self.fc = M.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = self.avg(self.pool(F.relu(self.bn(self.conv(x)))))
        return F.softmax(self.fc(F.flatten(x, 1)), axis=1)


class Elementwise(M.Module):
    def forward(self, x):
        a = F.exp(x) + F.abs(x) * 2 - F.floor(x)
        b = F.maximum(F.tanh(x), F.sigmoid(x)) / (F.ceil(x) + 3.5)
        c = F.reshape(F.concat([a, b], axis=1), (2, -1))
        d = F.sum(c, axis=1, keepdims=True) + F.max(c, axis=(0, 1), keepdims=True)
        e = F.log(F.relu(c) + 2) ** 2
        f = F.transpose(c.reshape(2, 6, 8), (0, 2, 1))
        return d + e + F.sum(c, axis=1).reshape(2, 1), F.minimum(f, 0.5)


class Axes(M.Module):
    """F.squeeze and F.expand_dims: upstream's RemoveAxis and AddAxis, AxisAddRemove operators
    of the dumped graph (ONNX Squeeze and Unsqueeze)."""

    def forward(self, x):  # (2, 1, 3, 1)
        a = F.squeeze(x, (1, 3)) * 2  # removes 1, then 2
        b = F.expand_dims(F.squeeze(x), (0, -1)) + 1
        c = F.expand_dims(F.relu(a), 1) - F.squeeze(F.sum(x, axis=2, keepdims=True), 3)
        return a, b, c


def nets():
    import bench_models
    return [("small_cnn", SmallCNN(), (2, 3, 8, 8)),
            ("elementwise", Elementwise(), (2, 6, 2, 2)),
            ("axes", Axes(), (2, 1, 3, 1)),
            ("resnet18", bench_models.MgeResNet18(), (1, 3, 224, 224)),
            ("shufflenet_v2", bench_models.MgeShuffleNetV2(), (1, 3, 224, 224))]


# net -> ONNX operators mge_to_onnx must write for it (the dump's AxisAddRemove operators, not
# Reshape)
ONNX_OPS = {"axes": {"Squeeze", "Unsqueeze"}}

# (net, direction) -> None when it converts and matches, else the mgeconvert limit that stops it
LIMITS = {
    ("small_cnn", "tracedmodule_to_onnx"): "passes the (1, C, 1, 1) conv bias to ONNX's Conv",
    ("elementwise", "tracedmodule_to_onnx"): "ignores keepdims and axis tuples of reductions",
    ("elementwise", "onnx_to_mge"): "its ONNX reader has no Exp",
    ("elementwise", "onnx_to_tracedmodule"): "its ONNX reader has no Exp",
    ("axes", "tracedmodule_to_onnx"): "its TracedModule frontend has no F.expand_dims",
    ("axes", "onnx_to_mge"): "its ONNX reader has no Squeeze",
    ("axes", "onnx_to_tracedmodule"): "its ONNX reader has no Squeeze",
    ("shufflenet_v2", "onnx_to_mge"): "its ONNX reader has no Squeeze",
    ("shufflenet_v2", "onnx_to_tracedmodule"): "its ONNX reader has no Squeeze",
}


def _patch_mgeconvert():
    from mgeconvert.backend.ir_to_onnx import onnx_op
    table = onnx_op.mge2onnx_dtype_mapping
    table.update({np.dtype(k): v for k, v in list(table.items())})


def _softmax_axis(path):
    import onnx
    model = onnx.load(path)
    for node in model.graph.node:
        if node.op_type == "Softmax" and not node.attribute:
            node.attribute.append(onnx.helper.make_attribute("axis", 1))
    onnx.save(model, path)


def _prepare(net, shape):
    net.eval()
    rng = np.random.RandomState(0)
    for m in net.modules():  # batch-norm statistics that are not the identity
        if isinstance(m, M.BatchNorm2d):
            n = m.running_mean.shape
            m.running_mean[...] = mge.tensor(rng.randn(*n).astype("float32") / 10)
            m.running_var[...] = mge.tensor(rng.rand(*n).astype("float32") + 0.5)
    x = rng.randn(*shape).astype("float32")
    out = net(mge.tensor(x))
    return x, [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]


def _compare(got, want, rtol=1e-4, atol=1e-4):
    got = [np.asarray(g) for g in got]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return max(float(np.abs(g - w).max()) for g, w in zip(got, want))


def _onnxruntime(path, x):
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def run_net(name, net, shape, out):
    from mgeconvert.converters.mge_to_onnx import mge_to_onnx
    from mgeconvert.converters.onnx_to_mge import onnx_to_mge
    from mgeconvert.converters.onnx_to_tm import onnx_to_tracedmodule
    from mgeconvert.converters.tm_to_onnx import tracedmodule_to_onnx

    x, want = _prepare(net, shape)
    base = os.path.join(out, name)

    @trace(symbolic=True, capture_as_const=True)
    def infer(data):
        return net(data)

    infer(mge.tensor(x))
    infer.dump(base + ".mge", arg_names=["data"])

    def mge_onnx():
        mge_to_onnx(base + ".mge", base + ".onnx", opset=11)
        import onnx
        written = {node.op_type for node in onnx.load(base + ".onnx").graph.node}
        missing = ONNX_OPS.get(name, set()) - written
        if missing:
            raise AssertionError(f"the ONNX model has no {sorted(missing)}: {sorted(written)}")
        return _compare(_onnxruntime(base + ".onnx", x), want)

    def tm_onnx():
        mge.save(tm.trace_module(net, mge.tensor(x)), base + ".tm")
        tracedmodule_to_onnx(base + ".tm", base + "_tm.onnx", opset=11)
        return _compare(_onnxruntime(base + "_tm.onnx", x), want)

    def onnx_mge():
        _softmax_axis(base + ".onnx")
        onnx_to_mge(base + ".onnx", base + "_back.mge")
        return _compare(list(GraphInference(base + "_back.mge").run(x).values()), want)

    def onnx_tm():
        onnx_to_tracedmodule(base + ".onnx", base + "_back.tm")
        back = mge.load(base + "_back.tm")
        back.eval()
        got = back(mge.tensor(x))
        return _compare([g.numpy() for g in (got if isinstance(got, (tuple, list)) else [got])],
                        want)

    results = []
    for direction, case in [("mge_to_onnx", mge_onnx), ("tracedmodule_to_onnx", tm_onnx),
                            ("onnx_to_mge", onnx_mge), ("onnx_to_tracedmodule", onnx_tm)]:
        try:
            outcome = f"ok, largest difference {case():.1e}"
            converted = True
        except Exception as error:  # a converter's or a comparison's failure: reported
            outcome = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
            converted = False
        limit = LIMITS.get((name, direction))
        expected = converted == (limit is None)
        results.append((name, direction, outcome, limit, expected))
    return results


def main():
    collections.Iterable = collections.abc.Iterable  # before mgeconvert's modules read it
    try:
        import mgeconvert  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        sys.exit(f"mgeconvert_check: {error}; see this file's docstring for the set-up")
    _patch_mgeconvert()
    unexpected = 0
    with tempfile.TemporaryDirectory() as out:
        for name, net, shape in nets():
            for net_name, direction, outcome, limit, expected in run_net(name, net, shape, out):
                unexpected += not expected
                note = "" if limit is None else f"  [mgeconvert limit: {limit}]"
                flag = "" if expected else "  UNEXPECTED"
                print(f"{net_name:14} {direction:21} {outcome}{note}{flag}")
    print(f"mgeconvert_check: {unexpected} unexpected outcome(s)")
    sys.exit(1 if unexpected else 0)


if __name__ == "__main__":
    main()
