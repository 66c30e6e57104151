"""Tests of megengine/core/_imperative_rt/ (`__init__`, `core2`, `imperative`): upstream's runtime
names on this engine."""
import gc
import logging

import numpy as np
import pytest

import megengine as mge
from megengine.core._imperative_rt import CompNode, Logger, TensorAttr, imperative
from megengine.core._imperative_rt.core2 import (Tensor, TensorWeakRef, apply, pop_scope,
                                                 push_scope, sync)
from megengine.core.ops.builtin import Elemwise


def test_compnode_is_the_device_a_tensor_reports():
    t = mge.tensor([1.0], device="xpux")
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


def test_logger_is_in_utils_and_set_on_the_class():
    # upstream 1.13 measured: `from megengine.core._imperative_rt.utils import Logger` is the
    # same class, `Logger.set_log_level(Logger.LogLevel.Error)` works on the class and returns
    # the previous LogLevel; megengine.logger._imperative_rt_logger is that class
    from megengine import logger as mlogger
    from megengine.core._imperative_rt import utils
    from megengine.logger import _set_mgb_log_level

    assert utils.Logger is Logger and mlogger._imperative_rt_logger is Logger
    previous = _set_mgb_log_level(logging.INFO)
    try:
        assert Logger.set_log_level(Logger.LogLevel.Error) == Logger.LogLevel.Info
        assert Logger.set_log_level(Logger.LogLevel.Warn) == Logger.LogLevel.Error
        assert logging.getLogger("megbrain").level == logging.WARNING
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


def test_config_async_level_is_megengine_config_async_level():
    from megengine.core._imperative_rt.core2 import config_async_level, get_async_level

    saved = mge.config.async_level
    try:
        config_async_level(1)
        assert get_async_level() == 1 == mge.config.async_level
        mge.config.async_level = 0
        assert get_async_level() == 0
        # upstream's C++ check raises RuntimeError; the value is left as it was
        for bad in (3, -1, True, "2"):
            with pytest.raises(RuntimeError, match="0, 1 or 2"):
                config_async_level(bad)
        assert get_async_level() == 0
    finally:
        mge.config.async_level = saved


def test_swap_and_drop_flags_are_kept_and_change_no_value():
    from megengine.core._imperative_rt import core2

    x = mge.tensor(np.arange(4, dtype=np.float32))
    try:
        core2._set_swap_flag(True)
        core2._set_drop_flag(1)
        assert core2._get_swap_flag() is True and core2._get_drop_flag() is True
        z = x + x
        x._swap_out()
        z._drop()
        np.testing.assert_array_equal(z.numpy(), 2 * np.arange(4, dtype=np.float32))
    finally:
        core2._set_swap_flag(False)
        core2._set_drop_flag(False)
    assert not core2._get_swap_flag() and not core2._get_drop_flag()


def test_operator_node_config_has_one_device_or_says_there_are_several():
    from megengine.core._imperative_rt import OperatorNodeConfig

    cf = OperatorNodeConfig()
    assert cf.comp_node is None and cf.comp_node_arr == []
    cf.comp_node_arr = ["xpux"]
    assert cf.comp_node == CompNode("xpux") and isinstance(cf.comp_node, CompNode)
    cf.comp_node_arr = ["cpu0", "cpu1"]
    with pytest.raises(ValueError, match="2 devices"):
        cf.comp_node
    cf.comp_node = "cpu1"  # setting the one device replaces the array
    assert cf.comp_node_arr == ["cpu1"]
    assert OperatorNodeConfig(comp_node="cpu0").comp_node == "cpu0"


def test_mode_enums_are_named_as_upstreams_and_pickle():
    import pickle

    from megengine.core.ops.builtin import Reduce

    assert Elemwise.__module__ == "megengine.core._imperative_rt.ops"
    assert Elemwise.Mode.__module__ == "megengine.core._imperative_rt.ops"
    assert Elemwise.Mode.__qualname__ == "Elemwise.Mode"
    assert Reduce.DataType.__qualname__ == "Reduce.DataType"
    assert pickle.loads(pickle.dumps(Elemwise.Mode.ADD)) is Elemwise.Mode.ADD
    op = pickle.loads(pickle.dumps(Elemwise(Elemwise.Mode.MUL)))
    assert op == Elemwise(mode="mul")


def test_graph_var_and_operator_classes_are_what_load_graph_returns(tmp_path):
    # upstream exports its graph's C++ classes as _imperative_rt.VarNode / OperatorNode, and
    # tools that read dumped models (mgeconvert's MegEngine frontend) check vars with
    # isinstance(x, rt.VarNode): the vars and operators of a loaded dump must pass that check
    import megengine.core._imperative_rt as rt
    import megengine.core.tensor.megbrain_graph as G
    import megengine.functional as F
    from megengine.jit import trace

    @trace(symbolic=True, capture_as_const=True)
    def f(x):
        return F.relu(x) * 2

    f(mge.tensor(np.array([-1.0, 3.0], dtype="float32")))
    path = str(tmp_path / "f.mge")
    f.dump(path, arg_names=["x"])
    loaded = G.load_graph(path)
    out = loaded.output_vars_list[0]
    assert isinstance(out, rt.VarNode) and isinstance(out.owner, rt.OperatorNode)
    assert all(isinstance(v, rt.VarNode) for v in out.owner.inputs)
    assert not isinstance(mge.tensor([1.0]), rt.VarNode)  # an eager tensor is no graph var
    with pytest.raises(AttributeError, match="no attribute 'NoSuchNode'"):
        rt.NoSuchNode


def test_runtime_options_are_reachable_from_core2():
    # upstream's C++ core exports get_option/set_option here (megengine/dtr.py, basedet's
    # ModelEMA import them from core2); they are megengine.core's, one state
    from megengine.core import get_option
    from megengine.core._imperative_rt import core2

    before = get_option("record_computing_path")
    core2.set_option("record_computing_path", 1)
    try:
        assert get_option("record_computing_path") == 1 == core2.get_option("record_computing_path")
    finally:
        core2.set_option("record_computing_path", before)


def test_push_and_pop_scope_nest_and_show_in_the_profile(tmp_path):
    # End-to-end-ASR-Transformer's clip_grad_norm wraps its work in push_scope / pop_scope
    from megengine.utils.profiler import Profiler

    with Profiler(str(tmp_path)) as prof:
        push_scope("clip")
        push_scope("inner")
        y = mge.tensor([1.0, 2.0]) * 2
        pop_scope("inner")
        pop_scope("clip")
    names = [(e["ph"], e["name"]) for e in prof.trace_events() if e["name"] in ("clip", "inner")]
    assert names == [("B", "clip"), ("B", "inner"), ("E", "inner"), ("E", "clip")]
    assert y.tolist() == [2.0, 4.0]
    push_scope("a")
    with pytest.raises(RuntimeError, match=r"pop_scope\('b'\): the innermost open scope is 'a'"):
        pop_scope("b")
    pop_scope("a")  # the failed pop left "a" open
    with pytest.raises(RuntimeError, match="is none"):
        pop_scope("a")
    with pytest.raises(TypeError, match="must be a str"):
        push_scope(1)
