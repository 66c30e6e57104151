"""QuantStub / DequantStub: identities in float mode, with gradients passing straight through."""
import numpy as np
import pytest

import megengine as mge
import megengine.module as M
from megengine.autodiff import GradManager


@pytest.mark.parametrize("cls", [M.QuantStub, M.DequantStub])
def test_stub_is_identity_with_identity_gradient(cls):
    x = mge.tensor(np.array([[1.5, -2.0], [0.0, 3.0]], np.float32))
    gm = GradManager().attach([x])
    with gm:
        y = cls()(x * 2)
        gm.backward(y.sum())
    np.testing.assert_array_equal(y.numpy(), x.numpy() * 2)
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 2), 2, np.float32))
    assert list(cls().state_dict()) == []
