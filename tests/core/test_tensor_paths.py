"""Upstream's module paths below megengine.core.tensor (megengine/core/tensor_paths.py): .amp,
and upstream 1.0's .tensor_wrapper, .function, .raw_tensor, .core and .tensor."""
import numpy as np
import pytest

import megengine as mge
from megengine import Tensor


def test_core_tensor_amp_is_the_autocast_state():
    from megengine import amp
    from megengine.core.tensor import amp as state

    before = amp.enabled
    with amp.autocast():
        assert state._enabled is True
    assert state._enabled == before


def test_upstream_1_0_paths_of_tensor_wrapper_and_function():
    from megengine.core.tensor.function import Function as Function10
    from megengine.core.tensor.tensor_wrapper import TensorWrapper

    assert TensorWrapper is Tensor and Function10 is mge.autodiff.Function
    x = TensorWrapper(np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal((x * x).numpy(), np.arange(3, dtype=np.float32) ** 2)
    import megengine.core.tensor.function as function_module

    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        function_module.Nothing


def test_upstream_1_0_raw_tensor_and_apply_paths():
    import megengine.core.tensor.raw_tensor as raw_tensor
    from megengine.core.ops.builtin import Elemwise
    from megengine.core.tensor.core import apply
    from megengine.core.tensor.tensor import Tensor as Tensor10

    assert raw_tensor.RawTensor is Tensor and Tensor10 is Tensor
    x = raw_tensor.as_raw_tensor(np.arange(4, dtype=np.int64), dtype="float32", device="cpu0")
    assert x.dtype == np.float32 and x.device == "cpu0"
    (y,) = apply(Elemwise(mode="mul"), x, x)
    np.testing.assert_array_equal(y.numpy(), np.arange(4, dtype=np.float32) ** 2)
