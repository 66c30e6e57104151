"""Tests of megengine/core/_imperative_rt/ (`__init__`, `core2`, `imperative`): upstream's runtime
names on this engine."""
import gc
import logging

import numpy as np
import pytest

import megengine as mge
from megengine.core._imperative_rt import CompNode, Logger, TensorAttr, imperative
from megengine.core._imperative_rt.core2 import Tensor, TensorWeakRef, apply, sync
from megengine.core.ops.builtin import Elemwise


def test_compnode_is_the_device_a_tensor_reports():
    t = mge.tensor([1.0])
    assert str(t.device) == str(CompNode("xpux"))  # xpux resolves as tensors resolve it
    assert CompNode("cpu1") == mge.tensor([1.0], device="cpu1").device
    assert CompNode(CompNode("cpu0")) == "cpu0"
    with pytest.raises(TypeError, match="device name"):
        CompNode(0)


def test_tensor_attr_types_its_fields():
    attr = TensorAttr()
    attr.dtype = "float16"
    attr.comp_node = "cpu0"
    attr.shape = [2, np.int64(3)]
    assert attr.dtype == np.float16 and attr.comp_node == "cpu0" and attr.shape == (2, 3)


def test_logger_shares_the_megbrain_loggers_level():
    from megengine.logger import _set_mgb_log_level

    previous = _set_mgb_log_level(logging.WARNING)
    try:
        assert Logger().set_log_level(Logger.LogLevel.Debug) == Logger.LogLevel.Warn
        assert Logger().set_log_level(logging.ERROR) == Logger.LogLevel.Debug
        assert logging.getLogger("megbrain").level == logging.ERROR
        with pytest.raises(ValueError, match="LogLevel"):
            Logger().set_log_level(7)
    finally:
        _set_mgb_log_level(previous)


def test_tensor_weak_ref_and_sync():
    assert Tensor is mge.Tensor
    x = mge.tensor([1.0, 2.0])
    (y,) = apply(Elemwise("add"), x, x)
    ref = TensorWeakRef(y)
    assert ref() is y
    sync()
    del y
    gc.collect()
    assert ref() is None
    with pytest.raises(TypeError, match="Tensor"):
        TensorWeakRef(np.zeros(2))


def test_make_backward_graph_says_what_to_use_instead():
    with pytest.raises(NotImplementedError, match="GradManager"):
        imperative.make_backward_graph(Elemwise("relu"), [TensorAttr()], [True], [True])


def test_create_complex_joins_real_and_imaginary_parts():
    from megengine.core._imperative_rt.core2 import create_complex

    re = np.arange(6, dtype=np.float32).reshape(2, 3)
    im = -re / 2
    got = create_complex(mge.tensor(re), mge.tensor(im))
    assert got.dtype == np.complex64
    np.testing.assert_array_equal(got.numpy(), re + 1j * im)


def test_opdef_is_the_descriptors_base_class():
    from megengine.core._imperative_rt import OpDef

    assert isinstance(Elemwise("add"), OpDef)
    with pytest.raises(AttributeError, match="no attribute 'Frobnicate'"):
        import megengine.core._imperative_rt as rt

        rt.Frobnicate
