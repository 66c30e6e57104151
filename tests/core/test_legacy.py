"""megengine.core's MegEngine 0.x names (megengine/core/legacy.py): each is its 1.x object, and
0.x's Buffer is module state that optimizers leave alone."""
import warnings

import numpy as np
import pytest

import megengine as mge
import megengine.core as core
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim


def test_0x_core_names_are_the_1x_objects():
    assert core.load is mge.load and core.save is mge.save
    assert core.Function is mge.autodiff.Function
    assert core.get_device_count is mge.get_device_count
    assert core.is_cuda_available is mge.is_cuda_available
    assert core.get_default_device is mge.get_default_device
    np.testing.assert_array_equal(core.ones((2, 3)).numpy(), np.ones((2, 3), "float32"))
    np.testing.assert_array_equal(core.zeros(4, dtype="int32").numpy(), np.zeros(4, "int32"))
    with pytest.raises(AttributeError, match="no attribute 'CompGraph'"):
        core.CompGraph  # a name 0.x's core never had still says so


class _Net(M.Module):
    def __init__(self):
        super().__init__()
        self.fc = M.Linear(3, 2)
        self.count = core.Buffer(np.zeros(2, "float32"))

    def forward(self, x):
        y = self.fc(x)
        self.count._reset(self.count + F.sum(y.detach(), axis=0))
        return y


def test_buffer_is_state_not_a_parameter():
    b = core.Buffer([1, 2], dtype="float32")
    assert isinstance(b, mge.Tensor) and not isinstance(b, mge.Parameter)
    assert b.dtype == np.float32
    net = _Net()
    assert "count" in net.state_dict() and len(list(net.parameters())) == 2
    opt = optim.SGD(net.parameters(), lr=0.1)
    w0, b0 = net.fc.weight.numpy().copy(), net.fc.bias.numpy().copy()
    x = np.ones((4, 3), "float32")
    opt.zero_grad()
    opt.backward(F.sum(net(mge.tensor(x))))
    opt.step()
    # the buffer holds the forward's column sums and the optimizer did not touch it
    np.testing.assert_allclose(net.count.numpy(), (x @ w0.T + b0).sum(0), rtol=1e-6)
    np.testing.assert_allclose(net.fc.bias.numpy(), b0 - 0.1 * 4, rtol=1e-6)
    with pytest.raises(ValueError, match="never trained"):
        core.Buffer([1.0], requires_grad=True)


def test_0x_tensor_methods():
    x = mge.tensor(np.arange(6, dtype="float32").reshape(2, 3))
    np.testing.assert_array_equal(x.shapeof().numpy(), [2, 3])
    assert x.shapeof().dtype == np.int32 and int(x.shapeof(1).numpy()) == 3
    row = mge.tensor(np.array([[1.0, 2.0, 3.0]], "float32"))
    np.testing.assert_array_equal(row.broadcast(2, 3).numpy(), np.broadcast_to(row.numpy(), (2, 3)))
    np.testing.assert_array_equal(row.broadcast((4, 3)).numpy(), np.ones((4, 1)) * row.numpy())
    b = core.Buffer(np.array([1.0, np.nan, np.inf], "float32"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b.reset_zero()
    np.testing.assert_array_equal(b.numpy(), np.zeros(3))
    # upstream 1.13's warning (its docs: reset_zero is deprecated since 1.0, use ``*= 0``),
    # pointing at the caller's line
    assert [(w.category, str(w.message), w.filename) for w in caught] == [
        (DeprecationWarning, "Call to deprecated method reset_zero. (use ``*= 0`` instead) -- "
         "Deprecated since version 1.0.", __file__)]


def test_buffer_is_reachable_as_mge_buffer():
    import megengine as mge
    from megengine.core import Buffer

    assert mge.Buffer is Buffer


def test_0x_tensor_factory_zeros_ones_scalar():
    # 0.x built these by broadcasting a Python scalar: int32 unless a dtype is given
    # (MegEngine/Models' GAN loss does ``zeros((n, 1)) + 1.0`` and gets float labels)
    from megengine.core.tensor_factory import ones, scalar, zeros

    z = zeros((2, 1))
    assert z.dtype == np.int32 and z.shape == (2, 1) and not z.numpy().any()
    labels = zeros((2, 1)) + 1.0
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels.numpy(), np.ones((2, 1), "float32"))
    np.testing.assert_array_equal(ones(3, dtype="float32").numpy(), np.ones(3, "float32"))
    shape = mge.tensor(np.zeros((4, 2), "float32")).shapeof()  # 0.x passed shape tensors
    assert ones(shape).shape == (4, 2) and ones(shape).dtype == np.int32
    s = scalar(2.5)
    assert s.shape == () and s.dtype == np.float32 and float(s.numpy()) == 2.5
    with pytest.raises(ValueError, match="comp_graph"):
        zeros((2,), comp_graph=object())


def test_0x_eager_graph_block_runs_as_plain_code():
    # 0.x's docstring example: `with Graph(eager_evaluation=True): x = tensor([1, 2])` prints
    # Tensor([1 2], dtype=int32); maml-megengine's initializer writes a parameter inside one
    with core.Graph(eager_evaluation=True) as g:
        x = mge.tensor([1, 2])
        w = mge.Parameter(np.zeros((2, 3), np.float32))
        w.set_value(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert isinstance(g, core.Graph) and g.eager_evaluation
    assert mge.Graph is core.Graph and mge.Buffer is core.Buffer  # 0.x's top-level names
    assert x.dtype == np.int32 and x.tolist() == [1, 2]
    np.testing.assert_array_equal(w.numpy(), np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="static graphs.*jit.trace"):
        core.Graph(eager_evaluation=False)
    with pytest.raises(TypeError):
        core.Graph(True)  # keyword-only, as 0.x
