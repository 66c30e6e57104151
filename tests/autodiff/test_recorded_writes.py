"""Writes into a tensor while a GradManager records (set_value, setitem, init, load_state_dict,
an optimizer's step, BatchNorm's running statistics): the recorded backward computes with the
values its forward saw, as upstream's (whose values never change: a write gives the tensor a
new value). Oracle: torch's gradient on the values the forward saw."""
import numpy as np
import pytest
import torch

import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine import Parameter, Tensor
from megengine.autodiff import GradManager
from devices import address

X = np.array([1.0, 2.0], np.float32)


def torch_grad(fn, a):
    t = torch.tensor(a, requires_grad=True)
    fn(t).sum().backward()
    return t.grad.numpy()


def test_set_value_of_a_saved_output_keeps_the_forward_value():
    x = Parameter(X)
    gm = GradManager().attach([x])
    with gm:
        y = F.exp(x)  # exp saves its output for backward
        z = y * 1
        y.set_value(F.zeros(2))
        gm.backward(z.sum())
    np.testing.assert_allclose(x.grad.numpy(), torch_grad(torch.exp, X), rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), [0, 0])


@pytest.mark.parametrize("write", [
    lambda t: t.set_value(F.zeros(2)),
    lambda t: t._reset(np.zeros(2, np.float32)),
    lambda t: M.init.fill_(t, 0.0),
    lambda t: M.init.normal_(t),
], ids=["set_value", "_reset", "init.fill_", "init.normal_"])
def test_writing_the_attached_parameter_after_its_use(write):
    x = Parameter(X)
    gm = GradManager().attach([x])
    with gm:
        y = x * x
        write(x)
        gm.backward(y.sum())
    np.testing.assert_allclose(x.grad.numpy(), torch_grad(lambda t: t * t, X))


def test_set_value_of_an_untracked_operand():
    x, c = Parameter(X), Tensor([3.0, 4.0])
    gm = GradManager().attach([x])
    with gm:
        y = x * c  # c is not attached, but mul keeps it for x's gradient
        c.set_value(F.zeros(2))
        gm.backward(y.sum())
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 4.0])


@pytest.mark.parametrize("index", [Ellipsis, 0, slice(None)])
def test_setitem_on_a_saved_parameter(index):
    x = Parameter(X)
    gm = GradManager().attach([x])
    with gm:
        y = x * x
        x[index] = 0.0
        gm.backward(y.sum())
    np.testing.assert_allclose(x.grad.numpy(), torch_grad(lambda t: t * t, X))


def test_load_state_dict_after_the_forward():
    lin = M.Linear(2, 1)
    w0 = lin.weight.numpy().copy()
    x = Parameter([[3.0, 4.0]])
    gm = GradManager().attach([x])
    with gm:
        y = lin(x)
        lin.load_state_dict({"weight": np.zeros((1, 2), np.float32),
                             "bias": np.zeros(1, np.float32)})
        gm.backward(y.sum())
    np.testing.assert_allclose(x.grad.numpy(), w0)
    np.testing.assert_array_equal(lin.weight.numpy(), 0)


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=1.0),
    lambda p: optim.SGD(p, lr=1.0, momentum=0.9),
    lambda p: optim.Adam(p, lr=1.0),
], ids=["sgd", "momentum", "adam"])
def test_optimizer_step_before_backward(make):
    # upstream's update gives the parameter a new value; the recorded mul keeps the old one
    x = Parameter(X)
    opt = make([x])
    gm = GradManager().attach([x])
    x.grad = Tensor([1.0, 1.0])
    with gm:
        y = x * x
        opt.step()
        x.grad = None
        gm.backward(y.sum())
    np.testing.assert_allclose(x.grad.numpy(), torch_grad(lambda t: t * t, X))
    assert not np.allclose(x.numpy(), X)  # the step did update it


def test_optimizer_step_under_an_outer_recording():
    x = Parameter(X)
    opt = optim.SGD([x], lr=0.5)
    outer, inner = GradManager().attach([x]), GradManager().attach([x])
    with outer:
        y = x * x * x
        with inner:
            inner.backward((x * 3).sum())
        opt.step()  # the outer recording still holds mul's inputs
        x.grad = None
        outer.backward(y.sum())
    np.testing.assert_allclose(x.grad.numpy(), torch_grad(lambda t: t * t * t, X), rtol=1e-6)


def test_eval_batch_norm_statistics_written_after_the_forward():
    bn = M.BatchNorm1d(2)
    bn.eval()
    mean, var = np.array([0.5, -1.0], np.float32), np.array([4.0, 0.25], np.float32)
    bn.running_mean.set_value(mean.reshape(bn.running_mean.shape))
    bn.running_var.set_value(var.reshape(bn.running_var.shape))
    a = np.random.RandomState(0).randn(3, 2).astype(np.float32)
    x = Parameter(a)
    gm = GradManager().attach([x])
    with gm:
        y = bn(x)
        bn.running_var.set_value(F.ones(bn.running_var.shape))
        gm.backward((y * y).sum())
    tb = torch.nn.BatchNorm1d(2).eval()
    tb.running_mean.copy_(torch.tensor(mean))
    tb.running_var.copy_(torch.tensor(var))
    np.testing.assert_allclose(x.grad.numpy(), torch_grad(lambda t: tb(t) ** 2, a),
                               rtol=1e-5, atol=1e-6)


def _train_batch_norm_case(seed):
    """A training BatchNorm1d(2), its input (array and attached Parameter) and GradManager."""
    a = np.random.RandomState(seed).randn(4, 2).astype(np.float32)
    x = Parameter(a)
    return M.BatchNorm1d(2), a, x, GradManager().attach([x])


def test_train_batch_norm_updates_its_statistics_while_recording():
    bn, a, x, gm = _train_batch_norm_case(1)
    with gm:
        y = bn(x)
        gm.backward((y * y * y).sum())
    tb = torch.nn.BatchNorm1d(2)
    np.testing.assert_allclose(x.grad.numpy(), torch_grad(lambda t: tb(t) ** 3, a),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean.numpy().ravel(), tb.running_mean.numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy().ravel(), tb.running_var.numpy(),
                               rtol=1e-6)


def test_storage_is_kept_while_no_recorded_op_holds_it():
    # writes go into the storage (torch mirrors, optimizers rely on it) outside recording and
    # inside one before any op was recorded
    x = Parameter(X)
    where = address(x)
    x.set_value(np.ones(2, np.float32))
    gm = GradManager().attach([x])
    with gm:
        x.set_value(np.full(2, 2, np.float32))
        assert address(x) == where
        y = x * x
        x.set_value(np.full(2, 3, np.float32))  # now mul holds the array: a new one
        assert address(x) != where
        gm.backward(y.sum())
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 4.0])
    where = address(x)
    optim.SGD([x], lr=0.1).step()
    assert address(x) == where


def test_a_0x_step_keeps_the_storage():
    # the 0.x flow steps while the optimizer's GradManager records on after backward; its
    # graph is gone by then, so the update still goes into the parameter's storage
    x = Parameter(X)
    opt = optim.SGD([x], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        loss = (x * x).sum()
        opt.backward(loss)
        where = address(x)
        opt.step()
        assert address(x) == where
    np.testing.assert_allclose(x.numpy(), 0.0, atol=1e-7)  # 1 - 0.5 * 2 = 0 per step


@pytest.mark.parametrize("symbolic", [False, True])
def test_traced_step_writing_an_operand_after_its_use(symbolic):
    # megengine.jit records the write as an event and replays it; each call's gradient is
    # that of the operand's value at the forward
    from megengine.jit import trace

    x, c = Parameter(X), Tensor([0.0, 0.0])
    gm = GradManager().attach([x])

    @trace(symbolic=symbolic)
    def step():
        with gm:
            y = x * c
            c.set_value(F.zeros(2))
            gm.backward(y.sum())
        return y

    for i in range(1, 4):  # the first call records, the others replay
        c.set_value(np.array([3.0, 4.0], np.float32) * i)
        x.grad = None
        step()
        np.testing.assert_allclose(x.grad.numpy(), [3.0 * i, 4.0 * i])
        np.testing.assert_array_equal(c.numpy(), [0, 0])


# ----- a write makes the tensor the value written, for autodiff too (upstream's reset) -----
def test_set_value_to_a_tracked_value_differentiates_into_it():
    # upstream: y becomes x * 3, so d(y * 1)/dx is 3 (the mul that made the old y is gone)
    x = Parameter(X)
    gm = GradManager().attach([x])
    with gm:
        y = x * 2
        y.set_value(x * 3)
        gm.backward((y * y).sum())
    np.testing.assert_allclose(x.grad.numpy(), torch_grad(lambda t: (t * 3) ** 2, X), rtol=1e-6)


@pytest.mark.parametrize("value", [
    lambda: np.array([5.0, 7.0], np.float32),
    lambda: Tensor([5.0, 7.0]),
    lambda: F.ones(2) * 0 + Tensor([5.0, 7.0]),
], ids=["numpy", "tensor", "computed untracked"])
def test_set_value_to_an_untracked_value_makes_a_computed_tensor_a_constant(value):
    x = Parameter(X)
    gm = GradManager().attach([x])
    with gm:
        y = x * 2
        y.set_value(value())
        gm.backward((y * x).sum())
    c = np.array([5.0, 7.0], np.float32)
    np.testing.assert_allclose(x.grad.numpy(), torch_grad(lambda t: torch.tensor(c) * t, X))


def test_set_value_from_another_dtype_and_device_keeps_the_gradient_path():
    x = Parameter(X)
    gm = GradManager().attach([x])
    with gm:
        y = Tensor([0.0, 0.0], dtype="float16", device="cpu1")
        y.set_value(x * 3)  # float32 on cpu0: comes over by a recorded op
        # the value's dtype, as upstream's; the tensor's device (upstream's takes the value's)
        assert y.dtype == np.float32 and y.device == "cpu1"
        gm.backward((y * y).sum())
    np.testing.assert_allclose(x.grad.numpy(), torch_grad(lambda t: (t * 3) ** 2, X), rtol=1e-6)


def test_attached_tensor_set_to_a_constant_stays_attached():
    # (upstream's would lose its attachment until the next record(): the later use got no
    # gradient; here its leaf stays, as for a write before the recording)
    x = Parameter(X)
    gm = GradManager().attach([x])
    with gm:
        x.set_value(np.array([3.0, 4.0], np.float32))
        gm.backward((x * x).sum())
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 8.0])


def test_batch_norm_twice_in_one_recording_matches_torch():
    # the running statistics the first call wrote are read by the second: they carry no
    # gradient, and the buffers stay untracked (a write gives a tensor its value's tracking)
    bn, a, x, gm = _train_batch_norm_case(2)
    with gm:
        y = bn(x) + bn(x * 2)
        assert not bn.running_mean._tracked and not bn.running_var._tracked
        gm.backward((y * y).sum())
    tb = torch.nn.BatchNorm1d(2)
    np.testing.assert_allclose(x.grad.numpy(),
                               torch_grad(lambda t: (tb(t) + tb(t * 2)) ** 2, a),
                               rtol=1e-4, atol=1e-5)


def test_set_value_returns_none():
    # upstream's set_value (and _reset) return None
    t = Tensor([1.0])
    assert t.set_value([2.0]) is None
    assert t._reset(np.array([3.0], np.float32)) is None
    np.testing.assert_array_equal(t.numpy(), [3.0])


# ----- detach(): upstream's alias shares the value, and a later write rebinds only the writer -----
WRITES_AFTER_DETACH = {
    "set_value": lambda t: t.set_value(np.array([5.0, 6.0], np.float32)),
    "_reset": lambda t: t._reset(Tensor([5.0, 6.0])),
    "+=": lambda t: t.__iadd__(Tensor([4.0, 4.0])),
    "setitem": lambda t: t.__setitem__(0, 5.0),
    "init.fill_": lambda t: M.init.fill_(t, 5.0),
}


@pytest.mark.parametrize("side, write", [
    *[("source", w) for w in WRITES_AFTER_DETACH],
    ("source", "SGD step"),
    *[("alias", w) for w in WRITES_AFTER_DETACH],
])
def test_a_write_after_detach_leaves_the_other_tensor_alone(side, write):
    # (the alias saw writes into the source outside recording, and the source saw the alias's
    # set_value: a parameter changed through x.detach().set_value(v))
    x = Parameter(X)
    d = x.detach()
    written, other = (x, d) if side == "source" else (d, x)
    before = written.numpy()
    if write == "SGD step":
        x.grad = Tensor([1.0, 1.0])
        optim.SGD([x], lr=1.0).step()
    else:
        WRITES_AFTER_DETACH[write](written)
    assert not np.array_equal(written.numpy(), before)  # the write did happen
    np.testing.assert_array_equal(other.numpy(), X)


def test_storage_is_kept_again_once_a_detached_alias_was_left_behind():
    x = Parameter(X)
    d = x.detach()
    x.set_value(np.zeros(2, np.float32))  # a new array: d keeps [1, 2]
    where = address(x)
    x.set_value(np.ones(2, np.float32))  # nothing shares it now: in place
    x.grad = Tensor([1.0, 1.0])
    optim.SGD([x], lr=1.0).step()
    assert address(x) == where
    np.testing.assert_array_equal(x.numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(d.numpy(), X)
