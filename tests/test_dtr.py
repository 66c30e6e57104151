"""`megengine.dtr`: upstream's DTR switches, checked and kept in the runtime options."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.core import get_option, set_option

_OPTIONS = ("dtr_eviction_threshold", "dtr_evictee_minimum_size", "enable_dtr_sqrt_sampling",
            "enable_dtr_auto_drop", "enable_drop", "buffer_length", "record_computing_path")


@pytest.fixture(autouse=True)
def restore_options():
    saved = {name: get_option(name) for name in _OPTIONS}
    yield
    for name, value in saved.items():
        set_option(name, value)


@pytest.mark.parametrize("value, nbytes", [
    (4096, 4096), ("2GB", 2 * 1024 ** 3), ("1.5 mb", 1536 * 1024), ("128b", 128),
    ("3KB", 3072),
])
def test_sizes_take_bytes_or_upstreams_unit_strings(value, nbytes):
    mge.dtr.eviction_threshold = value
    mge.dtr.evictee_minimum_size = value
    assert mge.dtr.eviction_threshold == nbytes == get_option("dtr_eviction_threshold")
    assert mge.dtr.evictee_minimum_size == nbytes == get_option("dtr_evictee_minimum_size")


def test_defaults_are_upstreams():
    assert mge.dtr.evictee_minimum_size == 1024 ** 2
    assert mge.dtr.eviction_threshold == 0 and mge.dtr.enable_sqrt_sampling is False


def test_bad_values_say_what_to_write_and_change_nothing():
    mge.dtr.eviction_threshold = "1GB"
    with pytest.raises(ValueError, match="unit B, KB, MB or GB"):
        mge.dtr.eviction_threshold = "2 TB"
    with pytest.raises(TypeError, match="int .bytes. or a string"):
        mge.dtr.eviction_threshold = 2.5
    with pytest.raises(ValueError, match=">= 0"):
        mge.dtr.evictee_minimum_size = -1
    with pytest.raises(TypeError, match=">= 0"):  # (upstream's C++ setter's type, measured)
        mge.dtr.eviction_threshold = -5
    with pytest.raises(TypeError, match="True or False"):
        mge.dtr.enable_sqrt_sampling = "yes"
    assert mge.dtr.eviction_threshold == 1024 ** 3


def test_enable_and_disable_set_upstreams_options():
    mge.dtr.enable()
    assert [get_option(n) for n in ("enable_dtr_auto_drop", "enable_drop", "buffer_length",
                                    "record_computing_path")] == [1, 1, 0, 1]
    mge.dtr.enable_sqrt_sampling = True
    assert get_option("enable_dtr_sqrt_sampling") == 1
    mge.dtr.disable()
    assert [get_option(n) for n in ("enable_dtr_auto_drop", "enable_drop",
                                    "record_computing_path")] == [0, 0, 0]


def test_training_under_dtr_gives_the_same_values():
    # values never change under upstream's DTR; oracle: the same step with DTR off
    def step():
        w = mge.Parameter(np.array([[0.5, -1.0], [2.0, 0.25]], np.float32))
        x = mge.tensor(np.array([[1.0, 2.0], [-3.0, 0.5]], np.float32))
        gm = GradManager().attach(w)
        with gm:
            loss = (F.relu(F.matmul(x, w)) ** 2).sum()
            gm.backward(loss)
        return loss.numpy(), w.grad.numpy()

    want = step()
    mge.dtr.evictee_minimum_size = 128
    mge.dtr.enable()
    got = step()
    mge.dtr.disable()
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
