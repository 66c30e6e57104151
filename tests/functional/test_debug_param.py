"""`F.debug_param`: upstream's execution strategy is the config's benchmark/deterministic switches."""
import pytest
import torch

import megengine as mge
from megengine.core._trace_option import (set_symbolic_shape, set_tensor_shape,
                                          use_symbolic_shape, use_tensor_shape)
from megengine.functional.debug_param import (get_conv_execution_strategy,
                                              get_execution_strategy,
                                              set_conv_execution_strategy,
                                              set_execution_strategy)


@pytest.fixture(autouse=True)
def restore_switches():
    saved = (mge.config.benchmark_kernel, mge.config.deterministic_kernel)
    yield
    mge.config.benchmark_kernel, mge.config.deterministic_kernel = saved


# upstream's documented meanings: PROFILE = benchmark_kernel, REPRODUCIBLE = deterministic_kernel
@pytest.mark.parametrize("option, profiled, deterministic, name", [
    ("HEURISTIC", False, False, "HEURISTIC"),
    ("PROFILE", True, False, "PROFILE"),
    ("PROFILE_HEURISTIC", True, False, "PROFILE"),
    ("HEURISTIC_REPRODUCIBLE", False, True, "HEURISTIC_REPRODUCIBLE"),
    ("PROFILE_REPRODUCIBLE", True, True, "PROFILE_REPRODUCIBLE"),
    ("PROFILE|REPRODUCIBLE", True, True, "PROFILE_REPRODUCIBLE"),
    ("REPRODUCIBLE", False, True, "HEURISTIC_REPRODUCIBLE"),
    ("heuristic | optimized", False, False, "HEURISTIC"),
])
def test_strategy_sets_the_kernel_switches_and_reaches_cudnn(option, profiled, deterministic,
                                                             name):
    # (not "benchmark": pytest-benchmark, where installed, owns a fixture of that name)
    for setter in (set_execution_strategy, set_conv_execution_strategy):
        mge.config.benchmark_kernel = not profiled
        mge.config.deterministic_kernel = not deterministic
        setter(option)
        assert mge.config.benchmark_kernel is profiled
        assert mge.config.deterministic_kernel is deterministic
        assert torch.backends.cudnn.benchmark is profiled  # torch is loaded: applied now
        assert torch.backends.cudnn.deterministic is deterministic
        assert get_execution_strategy() == get_conv_execution_strategy() == name


def test_config_switches_show_in_the_strategy():
    mge.config.benchmark_kernel, mge.config.deterministic_kernel = True, False
    assert get_execution_strategy() == "PROFILE"
    mge.config.benchmark_kernel, mge.config.deterministic_kernel = False, True
    assert get_execution_strategy() == "HEURISTIC_REPRODUCIBLE"


def test_bad_strategies_are_named_and_change_nothing():
    set_execution_strategy("PROFILE")
    with pytest.raises(ValueError, match="unknown strategy 'FASTEST'.*PROFILE"):
        set_execution_strategy("FASTEST")
    with pytest.raises(ValueError, match="unknown strategy"):
        set_execution_strategy("PROFILE|FAST")
    with pytest.raises(TypeError, match="string"):
        set_execution_strategy(1)
    assert get_execution_strategy() == "PROFILE"


def test_tensor_shape_switch_keeps_its_upstream_1_0_names():
    old = set_tensor_shape(False)
    try:
        assert use_tensor_shape() is False and use_symbolic_shape() is False
        assert set_symbolic_shape(True) is False and use_tensor_shape() is True
    finally:
        set_symbolic_shape(old)


def test_the_conv_names_warn_as_upstreams_deprecated_aliases():
    # upstream 1.13's words (measured), from the deprecated package's decorator
    with pytest.warns(DeprecationWarning, match=r"^Call to deprecated function \(or staticmethod\) "
                      r"set_conv_execution_strategy. \(use set_execution_strategy\(\) instead\) "
                      r"-- Deprecated since version 1.3.$"):
        set_conv_execution_strategy("HEURISTIC")
    with pytest.warns(DeprecationWarning, match=r"get_conv_execution_strategy. \(use "
                      r"get_execution_strategy\(\) instead\)"):
        assert get_conv_execution_strategy() == get_execution_strategy() == "HEURISTIC"
