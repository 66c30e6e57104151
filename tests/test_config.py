"""megengine.config and megengine.core._config: switches as module properties, _override."""
import subprocess
import sys
import types

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.core import _config

SWITCHES = {"benchmark_kernel": (False, True), "deterministic_kernel": (False, True),
            "benchmark_with_subprocess": (False, True), "async_level": (2, 0),
            "disable_memory_forwarding": (False, True), "_compute_mode": ("default", "float32"),
            "_bn_format": ("dim_1c11", "dim_1c11"), "_auto_format_convert": (True, False),
            "_conv_format": ("default", "NHWC")}


@pytest.fixture(autouse=True)
def _restore():
    before = {name: getattr(_config, name) for name in SWITCHES}
    yield
    for name, value in before.items():
        setattr(_config, name, value)


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_every_switch_has_upstreams_default_and_is_shared(name):
    default, other = SWITCHES[name]
    assert getattr(mge.config, name) == default
    setattr(mge.config, name, other)
    # one state: megengine.config and megengine.core._config are two views of it
    assert getattr(_config, name) == other and getattr(mge.config, name) == other
    assert name not in vars(mge.config) and name not in vars(_config)  # a property, not a value


@pytest.mark.parametrize("name,bad", [
    ("benchmark_kernel", "yes"), ("deterministic_kernel", 2), ("benchmark_with_subprocess", "no"),
    ("async_level", 3),
    ("async_level", -1), ("async_level", True), ("_compute_mode", "float16"),
    ("_bn_format", "nhwc"), ("disable_memory_forwarding", None), ("_auto_format_convert", "x"),
    ("_bn_format", "dim_111c"),  # upstream semantics we lack
    ("_conv_format", "NCHW4"),  # upstream's special kernel layouts
])
def test_bad_values_are_refused_and_change_nothing(name, bad):
    before = getattr(mge.config, name)
    with pytest.raises((TypeError, ValueError), match=name.lstrip("_").split("_")[0]):
        setattr(mge.config, name, bad)
    assert getattr(mge.config, name) == before


def test_override_sets_and_restores_even_on_error():
    with mge.config._override(benchmark_kernel=True, deterministic_kernel=True, async_level=0,
                              compute_mode="float32"):
        assert (mge.config.benchmark_kernel, mge.config.deterministic_kernel,
                mge.config.async_level, mge.config._compute_mode) == (True, True, 0, "float32")
    assert (mge.config.benchmark_kernel, mge.config.async_level) == (False, 2)
    with pytest.raises(KeyError):
        with mge.config._override(async_level=1):
            raise KeyError("boom")
    assert mge.config.async_level == 2
    # None leaves a switch as it is
    mge.config.deterministic_kernel = True
    with mge.config._override(benchmark_kernel=True):
        assert mge.config.deterministic_kernel is True
    # a bad value fails before anything changes
    with pytest.raises(ValueError, match="compute_mode"):
        with mge.config._override(benchmark_kernel=True, compute_mode="half"):
            pass
    assert mge.config.benchmark_kernel is False


def test_override_as_a_decorator():
    @_config._override(compute_mode="float32")
    def inside():
        return _config._compute_mode

    assert inside() == "float32" and _config._compute_mode == "default"


def test_model_code_writing_the_module_global_directly():
    # what MegEngine's model zoo does: `_config.__compute_mode = "float32"` (module level,
    # so no name mangling), and ops read the switch at call time
    setattr(_config, "__compute_mode", "float32")
    assert mge.config._compute_mode == "float32"
    assert _config._effective_compute_mode("default") == "float32"
    setattr(_config, "__compute_mode", "default")
    assert _config._effective_compute_mode("float32") == "float32"
    assert _config._get_actual_op_param("default", "default") == "default"


def test_float16_matmul_accumulates_in_float32_in_either_mode():
    # 4096 products of 1.0: accumulated in float16 the sum would stop at 2048 (2049 is not a
    # float16); upstream's "float32" compute mode gives 4096, and so does this engine
    a = mge.tensor(np.ones((1, 4096), np.float16))
    b = mge.tensor(np.ones((4096, 1), np.float16))
    for mode in ("default", "float32"):
        with mge.config._override(compute_mode=mode):
            out = F.matmul(a, b)
        assert out.dtype == np.float16 and out.item() == 4096.0


def test_cudnn_switches_reach_torch():
    fake = types.SimpleNamespace(backends=types.SimpleNamespace(
        cudnn=types.SimpleNamespace(benchmark=None, deterministic=None)))
    mge.config.benchmark_kernel = True
    _config._sync_torch_backends(fake)  # what the bridge does when it loads torch
    assert (fake.backends.cudnn.benchmark, fake.backends.cudnn.deterministic) == (True, False)
    torch = pytest.importorskip("torch")
    mge.config.deterministic_kernel = True  # torch is loaded now: applied at once
    assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is True
    mge.config.benchmark_kernel = False
    mge.config.deterministic_kernel = False
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is False


def test_star_import_and_no_torch():
    code = ("import sys; from megengine.config import *; import megengine.config as c; "
            "from megengine.core._config import _override; "
            "print(sorted(n for n in c.__all__ if not hasattr(c, n)), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False"]


def test_runtime_options_share_the_switches():
    from megengine.core import get_option, set_option

    assert get_option("async_level") == 2 and get_option("disable_memory_forwarding") == 0
    set_option("async_level", 0)
    assert mge.config.async_level == 0  # one state with the config switch
    with pytest.raises(ValueError, match="async_level"):
        set_option("async_level", 5)
    # upstream 1.13 measured: config.async_level = 5 fails its assert, "x" a comparison
    with pytest.raises(AssertionError, match="async_level must be 0, 1 or 2, got 5"):
        mge.config.async_level = 5
    with pytest.raises(TypeError, match="async_level must be 0, 1 or 2, got 'x'"):
        mge.config.async_level = "x"
    assert mge.config.async_level == 0  # unchanged
    before = get_option("enable_dtr_auto_drop")
    set_option("enable_dtr_auto_drop", 1)
    assert get_option("enable_dtr_auto_drop") == 1
    set_option("enable_dtr_auto_drop", before)
    with pytest.raises(ValueError, match="unknown option 'no_such'.*async_level"):
        get_option("no_such")
    with pytest.raises(TypeError, match="int"):
        set_option("max_recompute_time", "often")


def test_option_context_sets_and_restores_even_on_error():
    from megengine.core import get_option, option

    before = get_option("enable_host_compute")
    with option("enable_host_compute", 0):
        assert get_option("enable_host_compute") == 0
    assert get_option("enable_host_compute") == before
    async_before = get_option("async_level")
    with pytest.raises(KeyError):
        with option("async_level", 1):  # a switch option goes through the same path
            assert mge.config.async_level == 1
            raise KeyError("inside")
    assert get_option("async_level") == async_before
    with pytest.raises(ValueError, match="unknown option"):
        with option("no_such", 1):
            pass


def test_auto_format_convert_functions():
    from megengine.core._config import get_auto_format_convert, set_auto_format_convert

    # on by default, as upstream's runtime (tests/core/test_format.py covers what it does)
    assert get_auto_format_convert() is True
    assert set_auto_format_convert(False) is True
    assert mge.config._auto_format_convert is False and get_auto_format_convert() is False
    assert set_auto_format_convert(True) is False
    assert mge.config._auto_format_convert is True
