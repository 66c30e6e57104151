"""Tests of megengine/test/__init__.py: upstream's `assertTensorClose` helper."""
import numpy as np
import pytest

import megengine as mge
from megengine.test import assertTensorClose


def test_close_values_pass_with_a_relative_error_above_one_and_absolute_below():
    a = np.array([1000.0, 0.5, -2.0], np.float32)
    assertTensorClose(mge.tensor(a), a * (1 + 5e-7), max_err=1e-6)
    assertTensorClose(a, a + np.float32(5e-7), max_err=1e-6)  # |x| < 1: absolute
    with pytest.raises(AssertionError, match=r"tensor w not equal.*nonequal_idx=\(0,\)"):
        assertTensorClose(a, a * np.float32(1.01), max_err=1e-3, name="w")


def test_dtype_shape_and_special_values():
    a = np.array([1.0, np.nan, np.inf], np.float32)
    with pytest.raises(AssertionError, match="same dtype"):
        assertTensorClose(a, a.astype(np.float16))
    with pytest.raises(AssertionError, match="same shape"):
        assertTensorClose(a, a[:2])
    with pytest.raises(AssertionError, match="allow_special_values"):
        assertTensorClose(a, a)
    assertTensorClose(a, a.copy(), allow_special_values=True)
    with pytest.raises(AssertionError, match="inf values at different places"):
        assertTensorClose(a, np.array([1.0, np.nan, -np.inf], np.float32),
                          allow_special_values=True)


def test_engine_arrays_of_any_device_are_read_to_the_host():
    # a Tensor's raw storage is a CuPy array on a GPU (gpu-check runs this there), which
    # np.asarray refuses; the helper reads it as the Tensor would
    a = np.array([1.0, 2.0], np.float32)
    t = mge.tensor(a)
    assertTensorClose(t._data, a)
    with pytest.raises(AssertionError, match="not equal"):
        assertTensorClose(t._data, a + 1)
