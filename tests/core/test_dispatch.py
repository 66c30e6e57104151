"""Tests of megengine/core/dispatch.py: recording keys, the higher-order switch, gradient ownership."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.core.dispatch import Op, apply
from megengine.core.dispatch import on_device
from megengine.optimizer import clip_grad_norm

from devices import requires_cuda, shares_memory


def test_two_parameters_never_share_a_gradient_array():
    # issue 10: ((a + b) * c).sum() used to give a.grad and b.grad one array, so an in-place
    # edit (clip_grad_norm) scaled it twice
    va, vb, vc = [1.0, 2.0, 0.0], [3.0, 1.0, 0.0], [0.3, 0.4, 0.0]
    a, b, c = (mge.Parameter(v) for v in (va, vb, vc))
    gm = GradManager().attach([a, b, c])
    with gm:
        gm.backward(((a + b) * c).sum())
    assert not shares_memory(a.grad, b.grad)
    clip_grad_norm([a, b, c], max_norm=0.5)
    ta, tb, tc = (torch.tensor(v, requires_grad=True) for v in (va, vb, vc))
    ((ta + tb) * tc).sum().backward()
    torch.nn.utils.clip_grad_norm_([ta, tb, tc], max_norm=0.5)
    for p, t in zip((a, b, c), (ta, tb, tc)):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_gradient_is_not_the_callers_output_gradient_nor_a_view_of_it():
    x = mge.Parameter(np.ones((2, 3), np.float32))
    dy = mge.tensor(np.full((2, 3), 2.0, np.float32))
    gm = GradManager().attach(x)
    with gm:
        gm.backward(x.reshape(6).reshape(2, 3), dy)
    assert not shares_memory(x.grad, dy)
    with on_device(x.grad.device):  # (raw array code runs on the current GPU: make it x's)
        x.grad._data *= 0  # an in-place grad edit must not change the caller's tensor
    np.testing.assert_array_equal(dy.numpy(), np.full((2, 3), 2.0))


def test_torch_gradient_shared_by_two_parameters_is_split():
    from megengine.module.pytorch import PyTorchModule

    class Twice(torch.nn.Module):  # torch hands back one gradient tensor object for both
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.ones(3))
            self.q = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * (self.p + self.q)

    m = PyTorchModule(Twice())
    ps = list(m.parameters())
    gm = GradManager().attach(ps)
    with gm:
        gm.backward(m(mge.tensor([1.0, 2.0, 3.0])).sum())
    assert not shares_memory(ps[0].grad, ps[1].grad)
    np.testing.assert_array_equal(ps[0].grad.numpy(), [1, 2, 3])
    np.testing.assert_array_equal(ps[1].grad.numpy(), [1, 2, 3])


class _NoGraph(Op):
    """A differentiable op with only a raw backward: no grad_graph."""

    def forward(self, x):
        return x * 3

    def backward(self, g):
        return g * 3


def test_op_without_grad_graph_in_second_order_raises_naming_it():
    x = mge.Parameter([1.0, 2.0])
    outer, inner = GradManager().attach(x), GradManager().attach(x)
    with pytest.raises(RuntimeError, match="_NoGraph has no grad_graph"):
        with outer:
            with inner:
                inner.backward((apply(_NoGraph(), x) ** 2).sum())
    # first order through the same op works, and so does an unrelated outer recording
    gm = GradManager().attach(x)
    other = GradManager().attach(mge.Parameter([5.0]))
    x.grad = None
    with other:
        with gm:
            gm.backward(apply(_NoGraph(), x).sum())
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
    assert not x.grad._tracked


def test_a_grad_manager_started_after_the_forward_does_not_record_the_backward():
    x = mge.Parameter([1.0, 2.0])
    inner, later = GradManager().attach(x), GradManager().attach(x)
    inner.record()
    y = (F.sin(x) * x).sum()
    later.record()  # a later level: upstream hides an earlier GradManager's backward from it
    inner.backward(y)
    assert not x.grad._tracked
    v = np.array([1.0, 2.0])  # (at 2, -0.83 + 0.91 cancels: float32 sin and cos, numpy's or
    # CUDA's, are an ulp or two of 0.9 off there)
    np.testing.assert_allclose(x.grad.numpy(), np.cos(v) * v + np.sin(v), rtol=1e-6, atol=3e-7)
    later.release()


def test_single_recording_keeps_no_tensors_and_frees_the_graph():
    x = mge.Parameter(np.ones(3, np.float32))
    gm = GradManager().attach(x)
    with gm:
        y = F.exp(x) * 2
        node = y._node[0]
        assert node.saved is None
        gm.backward(y.sum())
    assert node.op is None and not y._tracked


def test_recording_is_per_grad_manager():
    x, w = mge.Parameter([1.0]), mge.Parameter([2.0])
    gx, gw = GradManager().attach(x), GradManager().attach(w)
    with gx:
        with gw:
            a = x * 3  # recorded for gx only
            b = w * 4  # for gw only
            c = a * b  # for both
            gw.backward(c)
        assert a._tracked and c._tracked and not b._tracked
        np.testing.assert_allclose(w.grad.numpy(), [12.0])
        assert w.grad._tracked  # d c/d w = 4 a, recorded for gx
        gx.backward(w.grad + c)  # d(4*3x + 24x)/dx
    np.testing.assert_allclose(x.grad.numpy(), [36.0])
    assert not (x * 2)._tracked


def test_intermediate_attached_by_an_inner_grad_manager_is_a_leaf_for_it():
    x = mge.Parameter([0.5, 2.0])
    outer = GradManager().attach(x)
    with outer:
        y = F.sin(x)  # only outer records: its values are not kept for higher order
        inner = GradManager()
        with inner:
            inner.attach(y)
            inner.backward((y * y).sum())  # stops at y: never enters sin's node
        np.testing.assert_allclose(y.grad.numpy(), 2 * np.sin([0.5, 2.0]), rtol=1e-6)
        assert y.grad._tracked  # 2 y, recorded by outer through sin
        outer.backward(y.grad.sum())
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.cos([0.5, 2.0]), rtol=1e-6)


def test_an_input_gradient_takes_the_inputs_dtype():
    # under autocast a convolution gives float16 and layer_norm computes in float32 (float32
    # weight): its gradient for the float16 input must arrive as float16, or the convolution's
    # ATen backward refuses the mix. Found by MegEngine/swin-transformer's `--mode mp` step.
    import megengine.amp as amp
    import megengine.module as M

    rs = np.random.RandomState(0)
    a = rs.randn(2, 3, 8, 8).astype(np.float32)
    w = rs.randn(2, 4, 4).astype(np.float32)
    x = mge.Parameter(a)
    conv, ln = M.Conv2d(3, 4, 4, stride=4), M.LayerNorm(4)
    gm = GradManager().attach([x, conv.weight])
    with amp.autocast():
        with gm:
            y = conv(x)
            assert y.dtype == np.float16
            z = ln(F.flatten(y, 2).transpose(0, 2, 1))
            gm.backward((z.astype("float32") * mge.tensor(w)).sum())
    assert x.grad.dtype == np.float32 and conv.weight.grad.dtype == np.float32
    tx = torch.tensor(a, requires_grad=True)
    tw = torch.tensor(conv.weight.numpy(), requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, torch.tensor(conv.bias.numpy().ravel()), stride=4)
    tz = torch.nn.functional.layer_norm(ty.flatten(2).transpose(1, 2), (4,), eps=ln.eps)
    (tz * torch.tensor(w)).sum().backward()
    # float16 activations: agreement to float16 precision
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=0.05, atol=0.05)
    np.testing.assert_allclose(conv.weight.grad.numpy(), tw.grad.numpy(), rtol=0.05, atol=0.05)


def test_op_outputs_are_arrays_even_when_numpy_gives_a_scalar():
    # numpy returns np.float32 (not a 0-d array) from a ufunc on a 0-d array or an index that
    # picks one element; the torch bridge under the collectives refused it. Found by
    # Magicalppj/LearnMegEngine, whose all_reduce_sum of a scalar loss failed on 2 ranks.
    from megengine.core import torch_bridge

    # numpy's behaviour alone (CuPy always returns 0-d arrays): on the CPU whatever the default
    x = mge.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), device="cpu0")
    for t, value in ((-F.sum(x), -15.0), (F.sum(x) / 3, 5.0), (x[1, 2], 5.0), (F.exp(x[0, 0]), 1.0)):
        assert type(t._data) is np.ndarray and t.shape == () and t.dtype == np.float32
        assert t.item() == pytest.approx(value)
        assert torch_bridge.to_torch(t._data).item() == pytest.approx(value)
    gm = GradManager().attach(x)
    with gm:
        y = -F.sum(x)  # the recorded path too
        assert type(y._data) is np.ndarray
        gm.backward(y)
    np.testing.assert_array_equal(x.grad.numpy(), -np.ones((2, 3)))


# ----- integer tensors carry gradients while Grad tracks one (upstream's core rule) -----

def _int_grad(tensors):
    """A core Grad tracking ``tensors`` (integer ones too) and the gradients it hands out."""
    from megengine.core.autodiff.grad import Grad

    got = {}
    grad = Grad()
    for t in tensors:
        grad.wrt(t, callback=lambda g, t=t: got.__setitem__(id(t), g))
    return grad, got


def test_integer_gradients_have_the_integer_dtype():
    # upstream's Grad differentiates int32 tensors with int32 gradients; d/dx sum(3x + x*x)
    # = 3 + 2x, computed by hand in int32
    from megengine.core import dispatch

    xv = np.array([1, -2, 5], np.int32)
    x = mge.tensor(xv)
    grad, got = _int_grad([x])
    with grad:
        assert dispatch._int_grads == 1
        y = (x * 3 + x * x).sum()
        grad(y, F.ones_like(y))
    assert dispatch._int_grads == 0  # the switch is off once nothing integer is tracked
    assert got[id(x)].dtype == np.int32
    np.testing.assert_array_equal(got[id(x)].numpy(), 3 + 2 * xv)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32, np.bool_])
def test_grad_manager_refuses_non_float_tensors_as_upstream(dtype):
    # upstream's GradManager.attach asserts a floating dtype (its test_grad_manager.py
    # test_attach_invalid_tensor_dtype); nothing is attached after the refusal
    from megengine.autodiff.grad_manager import AttachError

    w = mge.Parameter([1.0])
    gm = GradManager()
    with pytest.raises(AssertionError, match=f"only float.*{np.dtype(dtype)}"):
        gm.attach([w, mge.tensor([1], dtype=dtype)])
    assert issubclass(AttachError, AssertionError) and gm.attached_tensors() == []
    gm.attach(mge.tensor([1.0], dtype=np.float16))  # float16 is differentiable
    if dtype is np.bool_:  # core Grad takes integer tensors, never bool ones
        from megengine.core.autodiff.grad import Grad

        with pytest.raises(AssertionError, match="only float.*bool"):
            Grad().wrt(mge.tensor([True]))


def test_upstream_indexing_set_one_hot_gradients_of_int_tensors():
    # upstream's core/test_autodiff.py::test_indexing_set_one_hot, expected values from it
    from megengine.core._imperative_rt.core2 import apply as rt_apply
    from megengine.core.autodiff.grad import Grad
    from megengine.core.ops import builtin

    index = mge.tensor(np.arange(1, 4, dtype=np.int32))
    got = {}
    with Grad() as grad:
        zeros = F.zeros((3, 4), dtype="int32")
        ones = F.ones((3, 1), dtype="int32")
        grad.wrt(zeros, callback=lambda g: got.update(zeros=g))
        grad.wrt(ones, callback=lambda g: got.update(ones=g))
        (y,) = rt_apply(builtin.IndexingSetOneHot(axis=1, ndim=1), zeros, index, ones)
        np.testing.assert_array_equal(y.numpy(), np.eye(4, dtype=np.int32)[1:])
        grad(y, F.ones_like(y))
    assert got["zeros"].dtype == np.int32 and got["ones"].dtype == np.int32
    np.testing.assert_array_equal(got["zeros"].numpy(), 1 - np.eye(4, dtype=np.int32)[1:])
    np.testing.assert_array_equal(got["ones"].numpy(), np.ones((3, 1), np.int32))


def test_float_gradients_are_unchanged_while_an_integer_tensor_is_attached():
    # the int-mode branch of apply must give float parameters torch's gradients, and an
    # integer index (attached too) no gradient from the float result it selects
    w0 = np.random.RandomState(3).randn(4, 3).astype(np.float32)
    idx0 = np.array([2, 0, 3], np.int32)
    w, idx = mge.Parameter(w0), mge.tensor(idx0)
    grad, got = _int_grad([w, idx])
    with grad:
        y = F.tanh(w[idx]) * w[idx]
        r = y.astype("int32")  # float -> int: no gradient flows back through it
        loss = (y.sum() + r.astype("float32").sum() * 0) * 2
        grad(loss, F.ones_like(loss))
    tw = torch.tensor(w0, requires_grad=True)
    ti = torch.tensor(idx0, dtype=torch.long)
    ((torch.tanh(tw[ti]) * tw[ti]).sum() * 2).backward()
    np.testing.assert_allclose(got[id(w)].numpy(), tw.grad.numpy(), rtol=1e-6, atol=1e-7)
    assert got.get(id(idx)) is None


def test_a_float_result_of_an_attached_integer_tensor_cannot_send_its_gradient_back():
    # upstream: the gradient of TypeCvt from int is InvalidGrad ("invalid grad" at backward)
    x = mge.tensor([1, 2, 3])
    grad, got = _int_grad([x])
    with grad:
        y = (x.astype("float32") * 2.0).sum()
        with pytest.raises(RuntimeError, match="invalid grad.*dtype int32"):
            grad(y, F.ones_like(y))
    assert got == {}
    from megengine.core import dispatch

    assert dispatch._int_grads == 0


def test_unrecorded_one_input_op_gets_no_grad_flags_and_an_array_output():
    # the one-input branch of apply: needs_input_grad still set, a numpy scalar still wrapped
    # as a 0-d array, the output on the input's device
    seen = []

    class Pick(Op):
        def forward(self, a):
            seen.append(self.needs_input_grad)
            return a[1, 0]  # numpy gives a scalar (np.float32), not an array

    x = mge.tensor(np.array([[1, 2], [3, 4]], np.float32))
    out = apply(Pick(), x)
    assert seen == [(False,)]
    assert out.shape == () and not isinstance(out._data, np.generic)
    assert out.device == x.device and float(out.numpy()) == 3.0
    gm = GradManager().attach([x])
    with gm:
        y = apply(Pick(), x)
        assert seen[-1] == (True,)
        assert y._node is not None  # recorded: the one-input branch did not skip recording


@pytest.mark.parametrize("count", [2, 3])
def test_inputs_on_different_devices_are_refused_with_both_names(count):
    # the two-input branch of apply checks devices as the general one does (tensors labelled
    # with a second device by the internal constructor: no second device is needed)
    from megengine.core.tensor import Tensor

    class Sum(Op):
        def forward(self, *arrays):
            raise AssertionError("forward must not run on mixed devices")

    a = mge.tensor(np.ones(3, np.float32))
    other = Tensor._wrap(np.ones(3, np.float32), "elsewhere0")
    inputs = [a] * (count - 1) + [other]
    with pytest.raises(ValueError, match=rf"Sum: inputs are on different devices \({a.device} "
                                         r"and elsewhere0\); move them with .to\(device\) first"):
        apply(Sum(), *inputs)


@pytest.mark.parametrize("view", [
    lambda a: a, lambda a: a[1:, ::2], lambda a: a[::-1, ::-2], lambda a: a.T, lambda a: a[:0],
], ids=["whole", "strided", "reversed", "transposed", "empty"])
def test_extent_of_an_array_is_numpys_byte_bounds(view):
    # what a backward compares to find an op that kept a written PyTorchModule parameter
    from megengine.core.dispatch import _extent

    a = view(np.arange(24, dtype=np.float32).reshape(4, 6))
    lo, hi = np.lib.array_utils.byte_bounds(a)
    assert _extent(a) == ((lo, lo) if a.size == 0 else (lo, hi))


@pytest.mark.parametrize("view", [
    lambda a: a, lambda a: a[1:, ::2], lambda a: a.T, lambda a: a[:0], lambda a: a[:1].expand(3, 6)
    if isinstance(a, torch.Tensor) else np.broadcast_to(a[:1], (3, 6)),
], ids=["whole", "strided", "transposed", "empty", "expanded"])
def test_extent_of_a_torch_tensor_is_that_of_the_array_it_views(view):
    # an op running on ATen's kernels keeps torch views of its arrays (conv's weight): a write
    # into a PyTorchModule parameter is found in them too
    from megengine.core.dispatch import _extent

    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    start, end = _extent(view(torch.from_numpy(a)))
    if view(a).size == 0:  # (torch's empty tensor has no address: 0)
        assert start == end
    else:
        assert (start, end) == _extent(view(a))


@requires_cuda
def test_extent_of_a_device_array():
    from megengine.core.dispatch import _extent

    t = mge.tensor(np.zeros((3, 4), np.float32), device="gpu0")
    start = t._data.__cuda_array_interface__["data"][0]
    assert _extent(t._data) == (start, start + 48)
    assert _extent(t._data[1:, 1:3]) == (start + 20, start + 44)  # rows 1-2, columns 1-2


# ----- float16 computed in float32 on the CPU (`Op.half_in_float32`) -----

class _HalfProduct(Op):
    """x * w, noting the dtypes its forward and backward see; a second, int32 output (argmax)."""
    half_in_float32 = True

    def forward(self, x, w):
        self.seen = (x.dtype, w.dtype)
        self.x, self.w = x, w
        return x * w, np.argmax(x, axis=-1).astype(np.int32)

    def backward(self, g, g_index):
        self.seen_grad = g.dtype
        return g * self.w, (g * self.x).sum(0)


class _HalfProductMixed(_HalfProduct):
    """The same, its weight float16 or float32 (as a normalization's parameters)."""

    def computes_half(self, arrays):
        return arrays[0].dtype == np.float16 and arrays[0].size >= 1024


class _HalfProductOptedOut(_HalfProduct):
    half_in_float32 = False


def _half_case(n, w_dtype=np.float16):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, 8)).astype(np.float16)
    w = rng.standard_normal(8).astype(w_dtype)
    g = rng.standard_normal((n, 8)).astype(np.float16)
    return x, w, g


def test_half_in_float32_computes_float16_in_float32_rounded_once():
    # hand-computed: the product of the float32 values rounded to float16 once; the gradients
    # of the float32 gradient likewise (w's summed in float32 first, then rounded)
    x, w, g = _half_case(256)  # 2048 values: from functional._aten.HALF_MIN (1024)
    op = _HalfProduct()
    op.needs_input_grad = (True, True)
    y, index = op.forward(x, w)
    assert op.seen == (np.float32, np.float32)
    assert y.dtype == np.float16 and index.dtype == np.int32  # (integer outputs stay)
    x32, w32, g32 = (a.astype(np.float32) for a in (x, w, g))
    np.testing.assert_array_equal(y, (x32 * w32).astype(np.float16))
    np.testing.assert_array_equal(index, np.argmax(x, axis=-1))
    gx, gw = op.backward(g, np.zeros(256, np.float16))
    assert op.seen_grad == np.float32
    np.testing.assert_array_equal(gx, (g32 * w32).astype(np.float16))
    np.testing.assert_array_equal(gw, (g32 * x32).sum(0).astype(np.float16))
    assert gx.dtype == gw.dtype == np.float16


def test_half_in_float32_through_apply_and_a_gradient_manager():
    x, w, g = _half_case(256)
    mx, mw = mge.Parameter(x, device="cpu0"), mge.Parameter(w, device="cpu0")
    with GradManager().attach([mx, mw]) as gm:
        y, index = apply(_HalfProduct(), mx, mw)
        gm.backward(y, mge.tensor(g, device="cpu0"))
    x32, w32, g32 = (a.astype(np.float32) for a in (x, w, g))
    assert y.dtype == np.float16 and index.dtype == np.int32
    np.testing.assert_array_equal(y.numpy(), (x32 * w32).astype(np.float16))
    np.testing.assert_array_equal(mx.grad.numpy(), (g32 * w32).astype(np.float16))
    np.testing.assert_array_equal(mw.grad.numpy(), (g32 * x32).sum(0).astype(np.float16))


def test_half_in_float32_gives_a_float32_input_a_float32_gradient():
    # an op whose rule takes float32 inputs beside float16 ones (computes_half): those stay as
    # they are, forward and backward; the float16 ones compute in float32 and round back
    x, w, g = _half_case(256, np.float32)
    op = _HalfProductMixed()
    op.needs_input_grad = (True, True)
    y, _ = op.forward(x, w)
    assert op.seen == (np.float32, np.float32) and y.dtype == np.float16
    x32, g32 = x.astype(np.float32), g.astype(np.float32)
    np.testing.assert_array_equal(y, (x32 * w).astype(np.float16))
    gx, gw = op.backward(g, np.zeros(256, np.float16))
    assert gx.dtype == np.float16 and gw.dtype == np.float32
    np.testing.assert_array_equal(gx, (g32 * w).astype(np.float16))
    np.testing.assert_array_equal(gw, (g32 * x32).sum(0))


class _NotNumpy(np.ndarray):
    """Stands for a CuPy array: an array whose type is not numpy's own."""


@pytest.mark.parametrize("case", ["small", "mixed", "not numpy", "opted out"])
def test_half_in_float32_leaves_other_calls_alone(case):
    # fewer than HALF_MIN values, a float32 operand (the default rule: every input float16,
    # as an op that promotes mixed dtypes computes them in float32 itself), a CuPy-like
    # array (CuPy keeps its float16 kernels), a subclass that opts out: float16 as it is
    n = 64 if case == "small" else 256  # (64 * 8 values: fewer than HALF_MIN)
    x, w, g = _half_case(n, np.float32 if case == "mixed" else np.float16)
    if case == "not numpy":
        x = x.view(_NotNumpy)
    op = (_HalfProductOptedOut if case == "opted out" else _HalfProduct)()
    op.needs_input_grad = (True, True)
    y, _ = op.forward(x, w)
    assert op.seen == (x.dtype, w.dtype)
    assert y.dtype == np.result_type(x, w)
    np.testing.assert_array_equal(y, x * w)
    gx, gw = op.backward(g, None)
    assert op.seen_grad == np.float16
    np.testing.assert_array_equal(gx, g * w)


def test_op_classes_without_half_in_float32_keep_their_own_methods():
    # nothing wraps their forward and backward: their calls pay nothing for the rule
    from megengine.core.ops import Add

    assert _HalfProductOptedOut.forward is _HalfProduct.forward.half_inner
    assert _HalfProductOptedOut.backward is _HalfProduct.backward.half_inner
    assert Add.forward is vars(Add.__mro__[1])["forward"]  # (_Binary's own)
