"""Dumped programs at new input shapes: sizes read from ``x.shape`` while a dumpable trace records
are expressions (`megengine.core._trace_option.SymDim`), op parameters built from them are
computed at the shapes a loaded program runs at, and every other use is a guard
(`megengine.jit.shape_guards`). The oracle is the same function run eagerly at the new shape."""
import io
import json
import logging
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.core._trace_option import Shape, SymDim, set_symbolic_shape
from megengine.jit import trace
from megengine.jit.dump import _MAGIC, DumpError
from megengine.jit.shape_guards import ShapeGuardError
from megengine.traced_module import trace_module
from megengine.utils.comp_graph_tools import GraphInference, load_and_inference
from megengine.utils.network import Network

RNG = np.random.default_rng(0)


def _data(*shape):
    return RNG.standard_normal(shape).astype("float32")


def _dump(fn, *shapes, **options):
    """A GraphInference of ``fn`` traced (symbolic, capture_as_const) at ``shapes``."""
    f = trace(fn, symbolic=True, capture_as_const=True, **options)
    f(*[mge.tensor(_data(*s)) for s in shapes])
    buf = io.BytesIO()
    f.dump(buf, arg_names=[f"x{i}" for i in range(len(shapes))])
    buf.seek(0)
    return buf


def _run(buf, *arrays):
    buf.seek(0)
    out = GraphInference(buf).run(*arrays)
    return list(out.values())


def _eager(fn, *arrays):
    out = fn(*[mge.tensor(a) for a in arrays])
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]


class _Net(M.Module):
    """The CNN of the bug report: a conv, then upstream's flatten idiom into a linear layer."""

    def __init__(self):
        super().__init__()
        self.c = M.Conv2d(1, 4, 3)
        self.l = M.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        y = self.c(x)
        return self.l(y.reshape(y.shape[0], -1))


def test_cnn_runs_at_other_batches_directly_and_after_reset_batch_size(caplog):
    net = _Net()
    net.eval()
    buf = _dump(net, (2, 1, 8, 8))
    for n in (3, 5):
        x = _data(n, 1, 8, 8)
        np.testing.assert_allclose(_run(buf, x)[0], _eager(net, x)[0], rtol=1e-5, atol=1e-5)
    buf.seek(0)
    network = Network.load(buf)
    with caplog.at_level(logging.WARNING, logger="megengine.utils.network"):
        network.reset_batch_size(5)
    assert caplog.messages == []  # (a file with symbolic shapes: nothing to warn about)
    b2 = io.BytesIO()
    network.dump(b2)
    b2.seek(0)
    x = _data(5, 1, 8, 8)
    got = GraphInference(b2).run(x)
    np.testing.assert_allclose(list(got.values())[0], _eager(net, x)[0], rtol=1e-5, atol=1e-5)
    # the edited network's samples (its shape inference) are at the new batch too
    assert tuple(network.output_vars[0].partial_shape) == (5, 3)


def test_a_size_kept_as_a_constant_would_be_silently_wrong_and_is_not():
    # mean over a reshape by the batch: the traced batch's row count, if it were a constant
    fn = lambda x: x.reshape(x.shape[0], -1).mean(1)  # noqa: E731
    buf = _dump(fn, (2, 3, 4))
    for n in (3, 7):
        x = _data(n, 3, 4)
        np.testing.assert_allclose(_run(buf, x)[0], x.reshape(n, -1).mean(1), rtol=1e-5)


def _split_sizes(x):
    a, b = F.split(x, [1], axis=1)
    return a * 2 + b.sum(1, keepdims=True)


CASES = {
    "reshape -1": (lambda x: F.reshape(x, (x.shape[0], -1, 2)), (2, 3, 4)),
    "Tensor.reshape": (lambda x: x.reshape(x.shape[0] * x.shape[1], x.shape[2]), (2, 3, 4)),
    "flatten": (lambda x: F.flatten(x, 1) + 1, (2, 3, 4)),
    "broadcast_to": (lambda x: F.broadcast_to(x.sum(1, keepdims=True), (x.shape[0], 5, 4)),
                     (2, 3, 4)),
    "slicing": (lambda x: x[:, : x.shape[1] // 2] * 3, (2, 6)),
    "slice of the batch": (lambda x: x[: x.shape[0] - 1], (3, 2)),
    "zeros": (lambda x: x + F.zeros((x.shape[0], 1)), (2, 3)),
    "ones": (lambda x: F.ones(x.shape) * x, (2, 3)),
    "full": (lambda x: F.full((x.shape[0], x.shape[1] + 1), 2.5)[:, 1:] + x, (2, 3)),
    "expand_dims": (lambda x: F.expand_dims(x, 1) * 2, (2, 3)),
    "squeeze": (lambda x: F.squeeze(x, 1) * 2, (2, 1, 3)),
    "repeat": (lambda x: F.repeat(x, 2, axis=1), (2, 3)),
    "tile": (lambda x: F.tile(x, (1, 2)), (2, 3)),
    "split by sizes": (_split_sizes, (2, 3)),
    "arange": (lambda x: x + F.arange(x.shape[0]).reshape(-1, 1), (2, 3)),
    "interpolate at a fixed size": (lambda x: F.nn.interpolate(x, size=(4, 6)), (2, 1, 2, 3)),
    "x / x rewritten (arith_opt)": (lambda x: x / x + (x - x), (2, 3)),
    "zeros_like": (lambda x: F.where(x > 0, x, F.zeros_like(x)), (2, 3)),
    "a size as an operand": (lambda x: x.sum(0) / x.shape[0] + x.size - (1 + x.shape[0]) * x,
                             (2, 3)),
    "a size compared with a tensor": (lambda x: x.shape[1] > x, (2, 3)),
    "np.prod of a shape": (lambda x: x.reshape(-1, int(np.prod(x.shape[1:]))), (2, 3, 4)),
    "math of sizes": (lambda x: x.reshape(x.shape[0] // 1, (x.shape[1] * x.shape[2]) % 1000),
                      (2, 3, 4)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_ops_built_from_shapes_run_at_other_batches(name):
    fn, shape = CASES[name]
    buf = _dump(fn, shape)
    for n in (3, 5):
        x = _data(n, *shape[1:])
        got, want = _run(buf, x), _eager(fn, x)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_a_random_draw_sized_by_a_shape_follows_the_batch():
    fn = lambda x: x + mge.random.uniform(2.0, 3.0, size=(x.shape[0], 1))  # noqa: E731
    buf = _dump(fn, (2, 3))
    for n in (3, 5):
        x = _data(n, 3)
        (got,) = _run(buf, x)
        assert got.shape == (n, 3)
        noise = got - x  # one draw per row, in [2, 3)
        assert np.allclose(noise, noise[:, :1], atol=1e-6) and (noise >= 2 - 1e-6).all() \
            and (noise < 3 + 1e-6).all()


# ----- sizes from float arithmetic and rounding (interpolate's scale_factor, FPN upsampling) ---

def _resize_back(x):
    # DeepLab's "resize back to the input": the size of another value
    return F.nn.interpolate(F.max_pool2d(x, 2), size=x.shape[2:], align_corners=False)


def _rounded_sizes(x):
    n, c, h, w = x.shape
    return F.nn.interpolate(x, size=(math.ceil(h * 0.75), round(w / 3)), mode="nearest") \
        + math.floor(h / 2)


class _FPN(M.Module):
    """Like YOLOX's PAFPN: strided convs down, ``interpolate(scale_factor=2)`` up, lateral adds,
    then a head that flattens the pixels (``reshape(n, c, -1)``) of each level."""

    def __init__(self):
        super().__init__()
        self.down1 = M.Conv2d(2, 4, 3, stride=2, padding=1)
        self.down2 = M.Conv2d(4, 4, 3, stride=2, padding=1)
        self.lat = M.Conv2d(4, 4, 1)

    def forward(self, x):
        c3 = self.down1(x)
        c4 = self.down2(c3)
        p3 = self.lat(c3) + F.vision.interpolate(c4, scale_factor=2.0, mode="bilinear")
        outs = [p.reshape(p.shape[0], p.shape[1], -1) for p in (p3, c4)]
        return F.concat(outs, axis=2).transpose(0, 2, 1)


def _anchor_grid(x):
    """Like MegEngine/Models' detection anchors: float arange bounds from a feature map's size,
    a meshgrid by broadcast_to (sizes 1 at some levels), then the head's (-1, 4) layout."""
    outs = []
    for stride, f in ((2, x), (4, F.max_pool2d(x, 2))):
        h, w = f.shape[-2:]
        shift = 0.5 * stride
        gx = F.arange(shift, w * stride + shift, step=stride)
        gy = F.arange(shift, h * stride + shift, step=stride)
        mesh_x = F.broadcast_to(gx, (gy.shape[0], gx.shape[0]))
        mesh_y = F.broadcast_to(gy.reshape(-1, 1), (gy.shape[0], gx.shape[0]))
        centers = F.stack([mesh_x.reshape(-1), mesh_y.reshape(-1)], axis=1)
        outs.append(F.concat([centers, centers], axis=1)
                    + f.transpose(0, 2, 3, 1).reshape(-1, 4))
    return F.concat(outs, axis=0)


SPATIAL = {  # name -> (function, traced shape, other shapes)
    "interpolate scale_factor=2.0": (
        lambda x: F.nn.interpolate(x, scale_factor=2.0), (1, 2, 4, 6), [(2, 2, 5, 3), (1, 2, 8, 7)]),
    "interpolate scale_factor=(1.5, 0.5) nearest": (
        lambda x: F.nn.interpolate(x, scale_factor=(1.5, 0.5), mode="nearest"), (1, 1, 4, 6),
        [(2, 1, 5, 9), (1, 1, 7, 4)]),
    "interpolate size=(h * 2, w * 2)": (
        lambda x: F.nn.interpolate(x, size=(x.shape[2] * 2, x.shape[3] * 2)), (1, 2, 3, 4),
        [(2, 2, 5, 3), (1, 2, 2, 6)]),
    "interpolate size=x.shape[2:]": (_resize_back, (1, 2, 8, 6), [(2, 2, 6, 10), (1, 2, 4, 4)]),
    "ceil, round, floor of float sizes": (_rounded_sizes, (1, 1, 8, 6), [(2, 1, 12, 9),
                                                                          (1, 1, 4, 7)]),
    "a float size as an operand": (lambda x: x * (x.shape[2] / 2) + x.shape[3] * 0.5,
                                   (1, 2, 4, 6), [(2, 2, 5, 3), (1, 2, 7, 2)]),
    "adaptive_avg_pool2d to (h // 2, w // 2)": (
        lambda x: F.adaptive_avg_pool2d(x, (x.shape[2] // 2, x.shape[3] // 2)), (1, 2, 8, 6),
        [(2, 2, 10, 4), (1, 2, 6, 12)]),
    "adaptive_max_pool2d to a fixed size": (lambda x: F.adaptive_max_pool2d(x, (3, 2)),
                                            (1, 2, 9, 6), [(2, 2, 7, 5), (1, 2, 12, 4)]),
    "pixel_shuffle": (lambda x: F.nn.pixel_shuffle(x, 2) * 2, (1, 8, 3, 4),
                      [(2, 8, 5, 2), (1, 8, 2, 6)]),
    "FPN (YOLOX-like)": (_FPN(), (1, 2, 16, 16), [(2, 2, 20, 20), (1, 2, 12, 20)]),
    "anchor grid (RetinaNet/FCOS-like)": (_anchor_grid, (1, 4, 4, 6), [(1, 4, 2, 4), (1, 4, 6, 2),
                                                                       (1, 4, 8, 2)]),
}


@pytest.mark.parametrize("name", list(SPATIAL))
def test_sizes_from_float_arithmetic_follow_the_image_size(name):
    fn, traced, others = SPATIAL[name]
    if isinstance(fn, M.Module):
        fn.eval()
    buf = _dump(fn, traced)
    for shape in others:
        x = _data(*shape)
        got, want = _run(buf, x), _eager(fn, x)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def _int_of_float(x):
    return F.nn.interpolate(x, size=(int(x.shape[2] * 1.5), x.shape[3]))


# ----- shapes as tensors and arrays (megengine.jit.shape_tensors) -----

def _split_parts(x):
    return F.concat([p * (i + 1) for i, p in enumerate(F.split(x, 3, axis=1))], axis=1)


def _shape_tensor_math(x):
    s = mge.Tensor(x.shape)
    return x.reshape(F.concat([s[:1], (s[1:] // 1).prod().reshape(1)]))


def _zero_first_half(x):
    y = x * 1
    y[: mge.Tensor(x.shape)[0] // 2] = 0
    return y


SHAPE_VALUES = {  # name -> (function, traced shape, other shapes)
    "F.concat([x.shape[:1], tensor([-1])])": (
        lambda x: F.reshape(x, F.concat([x.shape[:1], mge.tensor([-1])])), (2, 3, 4),
        [(3, 3, 4), (4, 5, 2)]),
    "Tensor(x.shape)[::-1]": (lambda x: x.reshape(mge.Tensor(x.shape)[::-1]), (2, 3, 4),
                              [(3, 3, 4), (4, 5, 2)]),
    "shape tensor arithmetic": (_shape_tensor_math, (2, 3, 4), [(3, 3, 4), (4, 5, 2)]),
    "an item of a shape tensor": (lambda x: x.reshape(mge.Tensor(x.shape)[0], -1), (2, 3, 4),
                                  [(3, 3, 4), (4, 5, 2)]),
    "Tensor(x.shape) as values": (lambda x: x * mge.Tensor(x.shape[1:]).astype("float32"),
                                  (2, 3, 1), [(3, 3, 1), (4, 5, 2)]),
    "x.shape.numpy()[::-1]": (lambda x: x.reshape(x.shape.numpy()[::-1]), (2, 3, 4),
                              [(3, 3, 4), (4, 5, 2)]),
    "F.reshape(y, x.shape.numpy() * 1)": (
        lambda x: F.reshape(x.reshape(-1), x.shape.numpy() * 1), (2, 3, 4), [(3, 3, 4), (4, 5, 2)]),
    "F.reshape(y, x.shape)": (lambda x: F.reshape(x.reshape(-1), x.shape), (2, 3, 4),
                              [(3, 3, 4), (4, 5, 2)]),
    "F.linspace(0, 1, x.shape[-1])": (lambda x: x + F.linspace(0, 1, x.shape[-1]), (2, 3),
                                      [(3, 3), (2, 7)]),
    "F.split(x, 3) (unequal parts)": (_split_parts, (2, 7), [(3, 8), (2, 9), (1, 3)]),
    "F.broadcast_to(y, x.shape)": (lambda x: F.broadcast_to(x.sum(0, keepdims=True), x.shape),
                                   (2, 3), [(3, 3), (4, 5)]),
    "F.zeros(x.shape)": (lambda x: F.zeros(x.shape) + x, (2, 3), [(3, 3), (4, 5)]),
    # a slice's and a setitem's bound from a shape tensor (as a traced module's graph computes
    # them: x.shape is its GetVarShape tensor there); earlier versions of this fork guarded the
    # bounds (upstream 1.13 measured: its dump of x[1 : n - 1] traced at 4 rows gives 4 rows at 6)
    "x[1 : Tensor(x.shape)[0] - 1]": (lambda x: x[1 : mge.Tensor(x.shape)[0] - 1], (4, 3),
                                      [(6, 3), (3, 2)]),
    "y[: Tensor(x.shape)[0] // 2] = 0": (_zero_first_half, (4, 3), [(6, 3), (3, 2)]),
}


@pytest.mark.parametrize("name", list(SHAPE_VALUES))
def test_shapes_as_tensors_and_arrays_follow_the_input(name):
    fn, traced, others = SHAPE_VALUES[name]
    buf = _dump(fn, traced)
    for shape in others:
        x = _data(*shape)
        old = set_symbolic_shape(True)  # eager oracle: x.shape.numpy() as in a traced call
        try:
            want = _eager(fn, x)
        finally:
            set_symbolic_shape(old)
        got = _run(buf, x)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_a_shape_tensor_no_rule_follows_is_an_input_of_the_op_or_a_read_the_dump_refuses():
    # a float multiple of a shape tensor given as a shape is the reshape's input, computed by
    # the program's ops as upstream's graph computes it; its numbers read to the host are not
    fn = lambda x: x.reshape((mge.Tensor(x.shape) * 1.0).astype("int32")[::-1])  # noqa: E731
    buf = _dump(fn, (2, 3))
    x = _data(4, 5)
    np.testing.assert_array_equal(_run(buf, x)[0], _eager(fn, x)[0])
    read = lambda x: x.reshape(int((mge.Tensor(x.shape) * 1.0)[0].item()), -1)  # noqa: E731
    with pytest.raises(DumpError, match="read the value"):
        _dump(read, (2, 3))


# ----- sizes given to functions, also as a TracedModule's graph computes them ---------------
# A TracedModule computes ``x.shape[0] // 2`` from its GetVarShape tensor: an int32 tensor, which
# the functions below carry as they carry the size itself. Earlier versions of this fork read
# such a tensor as an int (a guard: ShapeGuardError at another batch size), and F.repeat read
# ``x.shape[0]`` itself so. Upstream 1.13 measured (trace_module, then trace(symbolic=True,
# capture_as_const=True).dump, traced at (4, 3), GraphInference at (6, 3)): each follows the
# input, except group_norm, whose dump upstream refuses (the traced module itself follows).

def _group_norm_of_pairs(a):
    g = a.reshape(len(a) // 2, -1)
    g = (g - g.mean(1, keepdims=True)) / np.sqrt(g.var(1, keepdims=True) + 1e-5)
    return g.reshape(1, len(a), 3, 1)


SIZED_BY_THE_BATCH = {  # name -> (function of x of shape (n, 3), numpy oracle)
    "F.topk(x, n // 2)": (lambda x: F.topk(x[:, 0], x.shape[0] // 2)[0],
                          lambda a: np.sort(a[:, 0])[: len(a) // 2]),
    "F.repeat(x, n)": (lambda x: F.repeat(x[:1], x.shape[0], axis=0),
                       lambda a: np.repeat(a[:1], len(a), axis=0)),
    "F.split(x, [n // 2])": (lambda x: F.split(x, [x.shape[0] // 2])[1],
                             lambda a: a[len(a) // 2:]),
    "F.nn.interpolate(size=(n * 2, 6))": (
        lambda x: F.nn.interpolate(x.reshape(1, 1, x.shape[0], 3), size=(x.shape[0] * 2, 6),
                                   mode="nearest"),
        lambda a: np.repeat(np.repeat(a, 2, 0), 2, 1)[None, None]),
    "F.one_hot(y, n)": (lambda x: F.one_hot(F.zeros((3,), "int32"), x.shape[0]),
                        lambda a: np.eye(len(a), dtype="int32")[[0, 0, 0]]),
    "F.adaptive_avg_pool2d(y, (n // 2, 1))": (
        lambda x: F.adaptive_avg_pool2d(x.reshape(1, 1, x.shape[0], 3), (x.shape[0] // 2, 1)),
        lambda a: a.reshape(-1, 6).mean(1).reshape(1, 1, -1, 1)),
    "F.nn.group_norm(y, n // 2)": (
        lambda x: F.nn.group_norm(x.reshape(1, x.shape[0], 3, 1), x.shape[0] // 2, affine=False),
        _group_norm_of_pairs),
}


class _Calls(M.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("name", list(SIZED_BY_THE_BATCH))
@pytest.mark.parametrize("traced_module", [False, True], ids=["function", "TracedModule"])
def test_sizes_given_to_functions_follow_the_batch(name, traced_module):
    fn, oracle = SIZED_BY_THE_BATCH[name]
    if traced_module:
        fn = trace_module(_Calls(fn), mge.tensor(_data(4, 3)))
    buf = _dump(fn, (4, 3))
    for n in (6, 8, 2):
        x = _data(n, 3)
        want = oracle(x)
        runs = [_run(buf, x)[0]] + ([fn(mge.tensor(x)).numpy()] if traced_module else [])
        for got in runs:
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shape_array_keeps_sizes_for_shapes_and_guards_numbers(monkeypatch):
    from megengine.core import _trace_option as opt

    src = _Source()
    monkeypatch.setattr(opt, "_dim_source", src)
    s = Shape(SymDim(v, ("dim", 0, i), src, True) for i, v in enumerate((2, 3, 4)))
    a = s.numpy()
    assert type(a) is opt.ShapeArray and a.dtype == np.int32 and a.shape == (3,) and len(a) == 3
    b = (a[1:] * 2 + 1) // 1
    assert type(b) is opt.ShapeArray and [type(v) for v in b.tolist()] == [SymDim, SymDim]
    assert [v.value for v in b] == [7, 9] and type(a[0]) is SymDim and type(np.prod(a)) is SymDim
    assert type(a.astype("int64")) is opt.ShapeArray
    # + - * // % with ints and ShapeArrays keep sizes, either side (a reflected %: below)
    for got, want in ((a + 1, [3, 4, 5]), (1 + a, [3, 4, 5]), (a - 1, [1, 2, 3]),
                      (10 - a, [8, 7, 6]), (a * 3, [6, 9, 12]), (3 * a, [6, 9, 12]),
                      (a // 2, [1, 1, 2]), (9 // a, [4, 3, 2]), (a % 3, [2, 0, 1]),
                      (a + a, [4, 6, 8]), (a - a, [0, 0, 0])):
        assert type(got) is opt.ShapeArray and all(type(v) is SymDim for v in got.tolist())
        assert [v.value for v in got] == want
    assert src.guards == []  # none of that read a number
    n = np.asarray(a)
    assert n.tolist() == [2, 3, 4] and n.dtype == np.int32
    assert [t for t, _ in src.guards] == [("dim", 0, 0), ("dim", 0, 1), ("dim", 0, 2)]
    assert (a + 0.5).tolist() == [2.5, 3.5, 4.5]  # (a float: the numbers)
    # every other ndarray use computes on the numbers (and guards them), as an ndarray would
    assert a.max() == 4 and (a / 2).tolist() == [1.0, 1.5, 2.0] and (-a).tolist() == [-2, -3, -4]
    assert (a > 2).tolist() == [False, True, True] and (12 // a[0]) == 6 and (1 / a)[0] == 0.5
    assert type(7 % a) is np.ndarray and (7 % a).tolist() == [1, 1, 3]


def _branch(x):
    if x.shape[0] > 1:
        return x * 2
    return x


def _python_range(x):
    return F.stack([x[i] * i for i in range(x.shape[0])])


def _numpy_size(x):
    return x + mge.tensor(np.zeros((x.shape[0], 1), "float32"))


def _format(x):
    return x * float(f"{x.shape[0]}")


def _int(x):
    return x * int(x.shape[0])


def _eye_by_shape(x):  # (F.eye of a size is an op that follows it: numpy's own eye reads it)
    return x @ mge.tensor(np.eye(x.shape[1], dtype="float32"))


def _pad_by_shape(x):
    # upstream 1.13 measured: its dump keeps the traced width (traced at (2, 3), run at (2, 4) it
    # gives (2, 7) where eager gives (2, 8)); here the width is a guard
    return F.nn.pad(x, ((0, 0), (0, x.shape[1])))


# name -> (function, traced shape, a shape where the guard holds, a shape where it fails,
#          the source text the error names)
GUARDS = {
    "if": (_branch, (2, 3), (5, 3), (1, 3), "if x.shape[0] > 1"),
    "range": (_python_range, (2, 3), (2, 4), (3, 3), "for i in range(x.shape[0])"),
    "numpy": (_numpy_size, (2, 3), (2, 5), (4, 3), "np.zeros((x.shape[0], 1)"),
    "format": (_format, (2, 3), (2, 4), (3, 3), 'f"{x.shape[0]}"'),
    "int": (_int, (2, 3), (2, 6), (3, 3), "int(x.shape[0])"),
    "int() of a float size": (_int_of_float, (1, 1, 4, 3), (2, 1, 4, 5), (1, 1, 6, 3),
                              "int(x.shape[2] * 1.5)"),
    "an op parameter not carried": (_pad_by_shape, (2, 3), (5, 3), (2, 4),
                                    "F.nn.pad(x, ((0, 0), (0, x.shape[1])))"),
}


@pytest.mark.parametrize("name", list(GUARDS))
def test_sizes_used_as_plain_values_are_guarded(name):
    fn, traced, ok, bad, text = GUARDS[name]
    buf = _dump(fn, traced)
    x = _data(*ok)
    for g, w in zip(_run(buf, x), _eager(fn, x)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    with pytest.raises(ShapeGuardError) as e:
        _run(buf, _data(*bad))
    msg = str(e.value)
    assert "x0" in msg and str(tuple(bad)) in msg and str(tuple(traced)) in msg
    assert text in msg and "test_symbolic_shapes.py:" in msg
    assert "Trace and dump the model at this shape" in msg


def test_a_size_read_inside_numpy_names_the_line_that_called_the_engine():
    buf = _dump(_eye_by_shape, (2, 3))
    with pytest.raises(ShapeGuardError) as e:
        _run(buf, _data(2, 4))
    if np.__name__ in str(type(mge.tensor(0)._data)):  # (numpy arrays: CuPy's frames differ)
        assert "np.eye(x.shape[1]" in str(e.value) and "test_symbolic_shapes.py:" in str(e.value)


def test_a_guard_names_the_traced_and_new_values():
    buf = _dump(_int, (2, 3))
    with pytest.raises(ShapeGuardError, match=r"x0\.shape\[0\] as int\(\).*was 2 when traced "
                                              r"and is 3"):
        _run(buf, _data(3, 3))


def test_engine_checks_guard_too_squeeze_at_a_batch_of_one():
    # squeeze() drops every size-1 dim: which ones depends on the shapes, so it is guarded
    buf = _dump(lambda x: F.squeeze(x) * 2, (2, 1, 3))
    x = _data(4, 1, 3)
    np.testing.assert_allclose(_run(buf, x)[0], x.reshape(4, 3) * 2, rtol=1e-6)
    with pytest.raises(ShapeGuardError, match="comparison"):
        _run(buf, _data(1, 1, 3))


# a guard (squeeze's check that the axis has size 1, a size used as an int) on the output of a
# reduction with keepdims=True, which the loader fuses with the step after it into one Reduce;
# numpy's results are the oracle
GUARDED_REDUCTIONS = {
    "squeeze(mean)": (lambda x: F.squeeze(F.mean(F.sigmoid(x), axis=3, keepdims=True), 3),
                      lambda x: (1 / (1 + np.exp(-x))).mean(3)),
    "squeeze() of a sum": (lambda x: F.squeeze(F.sum(x, axis=3, keepdims=True)),
                           lambda x: x.sum(3)),
    "squeeze(prod(mean))": (lambda x: F.squeeze(F.prod(F.mean(x, axis=3, keepdims=True), axis=2,
                                                       keepdims=True), 2),
                            lambda x: x.mean(3, keepdims=True).prod(2)),
    "expand_dims(squeeze(max))": (lambda x: F.expand_dims(F.squeeze(F.max(x, axis=3,
                                                                          keepdims=True), 3), 0),
                                  lambda x: x.max(3)[None]),
    "reshape(squeeze(mean))": (lambda x: F.reshape(F.squeeze(F.mean(x, axis=3, keepdims=True), 3),
                                                   (x.shape[0], -1)),
                               lambda x: x.mean(3).reshape(x.shape[0], -1)),
    "flatten(squeeze(min))": (lambda x: F.flatten(F.squeeze(F.min(x, axis=2, keepdims=True), 2),
                                                  1),
                              lambda x: x.min(2).reshape(x.shape[0], -1)),
    "a slice by int(size of a mean)": (
        lambda x: F.squeeze(F.mean(x, axis=3, keepdims=True), 3)[
            :, :int(F.mean(x, axis=3, keepdims=True).shape[1]) - 1],
        lambda x: x.mean(3)[:, :2]),
}


@pytest.mark.parametrize("name", list(GUARDED_REDUCTIONS))
def test_guards_on_reductions_the_loader_fuses_run_at_other_batches(name):
    # (earlier, the fused step no longer made the guarded value: AttributeError on None)
    fn, oracle = GUARDED_REDUCTIONS[name]
    buf = _dump(fn, (2, 3, 4, 5))
    for n in (2, 3, 5):
        x = _data(n, 3, 4, 5)
        got, = _run(buf, x)
        want = oracle(x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rank_must_match_and_fixed_shape_programs_keep_their_error():
    buf = _dump(lambda x: x * 2, (2, 3))
    with pytest.raises(ValueError, match="has 3 dims.*traced with 2"):
        _run(buf, _data(2, 3, 1))
    fixed = _dump(lambda x: x.reshape(x.shape[0], -1), (2, 3, 4), symbolic_shape=False)
    with pytest.raises(ValueError, match=r"trace and dump the new shape"):
        _run(fixed, _data(3, 3, 4))
    np.testing.assert_allclose(_run(fixed, x := _data(2, 3, 4))[0], x.reshape(2, 12))


def _graph_of(buf):
    data = buf.getvalue()
    assert data[:8] == _MAGIC
    z = zipfile.ZipFile(io.BytesIO(data[16:16 + int.from_bytes(data[8:16], "little")]))
    return z, json.loads(z.read("graph.json"))


def _as_version_2(buf):
    """The file as version 2 wrote it: no symbolic-shape keys, sizes as traced."""
    z, graph = _graph_of(buf)
    graph["version"] = 2
    del graph["symbolic_shape"], graph["shape_guards"]
    for step in graph["steps"]:
        for name in list(step.get("dyn", ())):
            if "dim" in json.dumps(step["state"][name]):
                step["state"][name] = _plain(step["state"][name])
                step["dyn"].remove(name)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as w:
        for item in z.namelist():
            w.writestr(item, json.dumps(graph) if item == "graph.json" else z.read(item))
    return io.BytesIO(out.getvalue())  # (a bare archive, as files before the mark)


def _plain(v):
    """State JSON with each {"dim": tree} replaced by the traced size (here: 2 * 12)."""
    if isinstance(v, dict):
        if "dim" in v:
            return {("dim", 0, 0): 2}.get(tuple(v["dim"]), 12)
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def test_version_2_files_still_load_and_run_at_their_traced_shape_only(caplog):
    buf = _dump(lambda x: x.reshape(x.shape[0], -1) * 2, (2, 3, 4))
    old = _as_version_2(buf)
    x = _data(2, 3, 4)
    np.testing.assert_allclose(_run(old, x)[0], x.reshape(2, 12) * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="trace and dump the new shape"):
        _run(old, _data(3, 3, 4))
    old.seek(0)
    network = Network.load(old)
    with caplog.at_level(logging.WARNING, logger="megengine.utils.network"):
        network.reset_batch_size(3)
    assert len(caplog.messages) == 1 and "dumped with fixed shapes" in caplog.messages[0]


def test_load_and_inference_runs_test_cases_at_other_shapes():
    fn = lambda x: x.reshape(x.shape[0], -1).mean(1)  # noqa: E731
    f = trace(fn, symbolic=True, capture_as_const=True)
    f(mge.tensor(_data(2, 3, 4)))
    cases = [_data(5, 3, 4), _data(1, 3, 4)]
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x"], input_data=cases)
    buf.seek(0)
    results = load_and_inference(buf)
    for got, x in zip(results, cases):
        np.testing.assert_allclose(got[list(got)[0]], x.reshape(len(x), -1).mean(1), rtol=1e-5)


def test_graph_inference_with_a_device_map_runs_at_other_shapes():
    buf = _dump(lambda x: x.reshape(x.shape[0], -1) + 1, (2, 3, 4))
    buf.seek(0)
    x = _data(4, 3, 4)
    got = GraphInference(buf, device="cpu0").run(x)
    np.testing.assert_allclose(list(got.values())[0], x.reshape(4, 12) + 1, rtol=1e-6)


def test_network_keeps_guards_through_edits_and_dump():
    buf = _dump(_int, (2, 3))
    buf.seek(0)
    network = Network.load(buf)
    assert network._symbolic_shape and len(network._shape_guards) == 1
    network.reset_batch_size(3)
    b2 = io.BytesIO()
    network.dump(b2)
    with pytest.raises(ShapeGuardError, match="was 2 when traced and is 3"):
        _run(b2, _data(3, 3))


def test_shape_keeps_its_tuple_behaviours_while_a_dumpable_trace_records():
    seen = {}

    def fn(x):
        s = x.shape
        n, c, h = s
        seen["items"] = (type(n), type(s))
        seen["tuple"] = (s == (2, 3, 4), s[1:] == (3, 4), len(s), s[1:] + (5,) == (3, 4, 5),
                         int(np.prod(s)), s.numpy().tolist(), tuple(s), hash(s) == hash((2, 3, 4)),
                         pickle.loads(pickle.dumps(s)), s.tolist(), s[1:].numpy().dtype)
        return x.reshape(n, c * h)

    buf = _dump(fn, (2, 3, 4))
    assert seen["items"] == (SymDim, Shape)
    assert seen["tuple"] == (True, True, 3, True, 24, [2, 3, 4], (2, 3, 4), True, (2, 3, 4),
                             [2, 3, 4], np.dtype("int32"))
    # those reads are guards: only the traced shape runs
    with pytest.raises(ShapeGuardError):
        _run(buf, _data(3, 3, 4))


def test_sizes_are_plain_ints_outside_dumpable_recordings():
    kinds = []

    def fn(x):
        kinds.append(type(x.shape[0]))
        return x * 2

    trace(fn, symbolic=True)(mge.tensor(_data(2, 3)))  # no capture_as_const: not dumpable
    f = trace(fn, symbolic=True, capture_as_const=True)
    f(mge.tensor(_data(2, 3)))
    f(mge.tensor(_data(2, 3)))  # no op of the record was built from x's sizes: a checked
    assert kinds == [int, SymDim, int]  # call reads them as plain ints (they act the same)
    fn(mge.tensor(_data(2, 3)))
    assert kinds[-1] is int


def test_checked_calls_hand_out_symdims_where_the_record_built_ops_from_them():
    kinds = []

    def fn(x, y):
        kinds.append((type(x.shape[0]), type(y.shape[0]), type(y.size)))
        return x.reshape(x.shape[0] * 3), y * 2  # an op built from x's sizes, none from y's

    f = trace(fn, symbolic=True, capture_as_const=True)
    for _ in range(2):
        out = f(mge.tensor(_data(2, 3)), mge.tensor(_data(4)))
    assert kinds == [(SymDim, SymDim, SymDim), (SymDim, int, int)]
    assert out[0].shape == (6,)
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x", "y"])  # the dump (from the recording) follows x's shape
    x, y = _data(5, 3), _data(4)
    got = _run(buf, x, y)
    np.testing.assert_allclose(got[0], x.reshape(15))
    np.testing.assert_allclose(got[1], y * 2)


def test_a_size_kept_after_recording_is_its_value():
    kept = []
    f = trace(lambda x: (kept.append(x.shape[0]), x * 1)[1], symbolic=True,
              capture_as_const=True)
    f(mge.tensor(_data(2, 3)))
    n = kept[0]
    assert n + 1 == 3 and int(n) == 2 and n * 2 == 4 and range(n) == range(2)


def test_the_jit_page_example_runs():
    from tests.test_docs import run_block

    run_block(Path(__file__).resolve().parents[2] / "docs" / "api" / "jit.rst",
              "return y * 2 if x.shape[0] > 1 else y")


class _Source:
    """A stand-in recorder: collects the guards SymDims report."""

    def __init__(self):
        self.guards = []

    def guard(self, tree, value, kind):
        self.guards.append((tree, value))


def test_symdim_arithmetic_is_an_expression_and_escapes_are_guards(monkeypatch):
    from megengine.core import _trace_option as opt

    src = _Source()
    monkeypatch.setattr(opt, "_dim_source", src)
    n = SymDim(6, ("dim", 0, 0), src, True)
    c = SymDim(4, ("dim", 0, 1), src, True)
    e = (n * c - 3) // 2 % 5 + -n
    assert type(e) is SymDim and e.value == ((6 * 4 - 3) // 2 % 5) - 6
    sizes = {(0, 0): 10, (0, 1): 7}
    assert opt.evaluate(e.tree, lambda s, a: sizes[s, a]) == ((10 * 7 - 3) // 2 % 5) - 10
    assert src.guards == []  # arithmetic keeps the expression: nothing leaves it
    q, r = divmod(n, 4)
    assert (q.value, r.value) == (1, 2) and type(q) is SymDim
    # a size is never negative: comparisons with negative numbers decide nothing
    assert (n != -1) and not (n < 0) and n >= 0 and src.guards == []
    assert n == n and src.guards == []  # the same expression: equal at any shape
    assert (n > 1) is True and src.guards == [((">", ("dim", 0, 0), 1), True)]
    assert int(c) == 4 and list(range(c)) == [0, 1, 2, 3] and np.zeros(c).shape == (4,)
    # (reported at each use; the recorder keeps one of each)
    assert src.guards[1:] == [(("dim", 0, 1), 4)] * 3
    assert f"{n}" == "6" and n ** 2 == 36 and src.guards[-1] == (("dim", 0, 0), 6)
    monkeypatch.setattr(opt, "_dim_source", None)  # the recording is over: plain values
    assert n + 1 == 7 and type(n + 1) is int and n * 2.5 == 15.0 and math.floor(n * 1.5) == 9


def test_float_sizes_are_expressions_rounding_gives_int_sizes_and_int_is_a_guard(monkeypatch):
    from megengine.core import _trace_option as opt

    src = _Source()
    monkeypatch.setattr(opt, "_dim_source", src)
    h = SymDim(5, ("dim", 0, 2), src, True)
    at = lambda e, v: opt.evaluate(e.tree, lambda s, a: v)  # noqa: E731  (h = v)
    exprs = {"floor(h * 1.5)": (math.floor(h * 1.5), lambda v: math.floor(v * 1.5)),
             "ceil(h / 2)": (math.ceil(h / 2), lambda v: math.ceil(v / 2)),
             "round(h * 0.5)": (round(h * 0.5), lambda v: round(v * 0.5)),  # (ties to even)
             "trunc(2.5 / h)": (math.trunc(2.5 / h), lambda v: math.trunc(2.5 / v)),
             "h // 2 + 0.25 * h": (h // 2 + 0.25 * h, lambda v: v // 2 + 0.25 * v)}
    for name, (e, py) in exprs.items():
        assert type(e) is SymDim and e.value == py(5), name
        for v in (1, 4, 7, 10):
            got = at(e, v)
            assert got == py(v) and type(got) is type(py(v)), (name, v)
    assert opt.is_dim(math.floor(h * 1.5)) and not opt.is_dim(h * 1.5)
    assert round(h) is h and math.floor(h) is h  # an int size rounds to itself
    assert src.guards == []  # none of that left the expressions
    with pytest.raises(TypeError, match="cannot be interpreted as an integer"):
        range(h * 2.0)  # as a float: no index
    assert int(h * 1.5) == 7 and src.guards == [(("trunc", ("*", ("dim", 0, 2), 1.5)), 7)]
    assert opt.render(math.ceil(h / 2).tree, lambda s, a: "h") == "ceil((h / 2))"


def test_ops_that_make_values_record_their_device_by_name_and_are_mapped_on_load():
    fn = lambda x: x + F.zeros((x.shape[0], 1)) + F.arange(x.shape[1])  # noqa: E731
    buf = _dump(fn, (2, 3))
    z, graph = _graph_of(buf)
    # (F.arange of a size is upstream's Linspace of computed bounds: a Sizes value is its stop)
    made = [s for s in graph["steps"] if s["op"].rsplit(":", 1)[1] in ("Full", "Sizes")]
    default = mge.get_default_device()  # (its name: "xpux" unless MGE_DEFAULT_DEVICE is set)
    assert len(made) == 2 and all(s["state"]["device"] == default for s in made)
    missing = f"gpu{mge.get_device_count('gpu')}"  # a GPU this machine does not have
    for s in made:  # as if dumped on a machine with more GPUs
        s["state"]["device"] = missing
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as w:
        for item in z.namelist():
            w.writestr(item, json.dumps(graph) if item == "graph.json" else z.read(item))
    with pytest.raises(ValueError, match=f"'{missing}', which does not exist here"):
        GraphInference(io.BytesIO(out.getvalue())).run(_data(2, 3))
    x = _data(4, 5)
    got = GraphInference(io.BytesIO(out.getvalue()), device="cpu0").run(x)
    np.testing.assert_allclose(list(got.values())[0], x + np.arange(5), rtol=1e-6)


def test_resize_ops_of_older_files_keep_their_matrices():
    # files dumped before _Resize kept sizes hold the resampling matrices in its state
    from megengine.core.dispatch import apply
    from megengine.functional.vision import _Resize, _interp_matrix

    op = _Resize.__new__(_Resize)
    op.mat_h, op.mat_w = _interp_matrix(3, 5, "bilinear", False), _interp_matrix(4, 2, "bilinear",
                                                                                  False)
    x = _data(1, 2, 3, 4)
    got = apply(op, mge.tensor(x)).numpy()
    want = F.nn.interpolate(mge.tensor(x), size=(5, 2)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


# values made from sizes (F.zeros((n, 3)), x / n, Tensor(n), arange) are ops of the recording:
# a checked call of the same trace must make them too, or it stops with an operator mismatch
_MADE_FROM_SIZES = {
    "zeros": lambda x: x + F.zeros((x.shape[0], 3)),
    "operand": lambda x: x / x.shape[0],
    "arange": lambda x: x + F.arange(x.shape[1]),
    "tensor": lambda x: x * mge.Tensor(x.shape[0]),
    "float arange": lambda x: x + F.arange(0.5, x.shape[1] * 1.0, 1.0),
    "shape tensor": lambda x: F.reshape(x, mge.Tensor(x.shape[::-1])),
}


@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("name", sorted(_MADE_FROM_SIZES))
def test_later_calls_make_the_same_values_from_sizes(name, symbolic):
    fn = _MADE_FROM_SIZES[name]
    f = trace(fn, symbolic=symbolic, capture_as_const=True)
    for _ in range(3):  # the first call records, the others are checked (or replayed)
        x = _data(2, 3)
        np.testing.assert_allclose(f(mge.tensor(x)).numpy(), _eager(fn, x)[0], rtol=1e-6)
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x0"])
    x = _data(4, 3)
    np.testing.assert_allclose(_run(buf, x)[0], _eager(fn, x)[0], rtol=1e-6)


def test_returned_sizes_are_outputs_that_follow_the_input():
    """Upstream's traced sizes are Tensors: a size the function returns is an output of the
    dumped program (upstream's test_subtensor_when_shape_invalid)."""
    def fn(x):
        n = x.shape[-1]
        arr = F.arange(4, n * 8 + 4, 8)
        return arr.shape[0], x.shape, n / 2, x * 2

    f = trace(fn, symbolic=False, capture_as_const=True)
    for _ in range(2):
        out = f(mge.tensor(_data(1, 3, 6)))
        assert all(isinstance(o, mge.Tensor) for o in out)
        assert [o.numpy().tolist() for o in out[:3]] == [6, [1, 3, 6], 3.0]
    buf = io.BytesIO()
    f.dump(buf, arg_names=["x0"])
    got = _run(buf, _data(2, 5, 9))
    assert [g.tolist() for g in got[:3]] == [9, [2, 5, 9], 4.5]


def test_a_branch_its_symdims_decided_is_taken_again_in_checked_calls():
    # broadcast_to((2, 3)) of a (2, 3) value: the recording's sizes are expressions, not the
    # ints 2 and 3, so it made the op (a dump runs it at other shapes); a checked call, which
    # reads plain ints for the sizes no op was built from, must make it too
    def fn(x):
        return F.broadcast_to(x, (2, 3)) * 2

    f = trace(fn, symbolic=True, capture_as_const=True)
    x = _data(2, 3)
    for _ in range(3):
        np.testing.assert_allclose(f(mge.tensor(x)).numpy(), x * 2)


def test_a_sized_value_let_go_of_reads_as_symdims_in_checked_calls():
    # y (64 KiB) is let go of after its last use in the record (the first reshape); a shape
    # read after that still finds its slot (the checked call's sizes as the recording's)
    from megengine.jit import check

    kinds = []

    def fn(x):
        y = x * 2
        z = y.reshape(y.shape[0] * y.shape[1])
        w = z + 1
        kinds.append(type(y.shape[1]))
        return w

    x = np.ones((4, check.FREE_BYTES // 16), "float32")
    f = trace(fn, symbolic=True, capture_as_const=True)
    for _ in range(3):
        np.testing.assert_allclose(f(mge.tensor(x)).numpy(), x.reshape(-1) * 2 + 1)
    assert kinds == [SymDim] * 3
