"""Tests of megenginelite/tensor.py: LiteLayout and LiteTensor against numpy and upstream's
documented behaviour."""
import numpy as np
import pytest

from megenginelite import (LiteDataType, LiteDeviceType, LiteLayout, LiteTensor,
                           LiteTensorConcat, lite_dtype_2_numpy)


def test_layout_takes_every_dtype_spelling_upstream_takes():
    for dtype in (LiteDataType.LITE_UINT8, "uint8", np.dtype("uint8"), np.uint8):
        layout = LiteLayout([1, 4, 8, 8], dtype)
        assert layout.shapes == [1, 4, 8, 8] and layout.ndim == 4
        assert layout.data_type == LiteDataType.LITE_UINT8 and layout.dtype is np.uint8
    assert LiteLayout().data_type == LiteDataType.LITE_FLOAT and LiteLayout().ndim == 0
    # upstream's repr: a dict of shapes, ndim and the numpy type
    assert repr(LiteLayout([2, 3], "int32")) == (
        "{'shapes': [2, 3], 'ndim': 2, 'data_type': <class 'numpy.int32'>}")
    with pytest.raises(ValueError, match="float64.*convert"):
        LiteLayout([2], "float64")
    with pytest.raises(ValueError, match="at most 7"):
        LiteLayout([1] * 8)
    assert lite_dtype_2_numpy(LiteDataType.LITE_HALF) is np.float16


def test_tensor_starts_zeroed_in_its_layout_and_reports_its_size():
    t = LiteTensor(LiteLayout([2, 3], "int16"))
    assert t.to_numpy().dtype == np.int16 and (t.to_numpy() == 0).all()
    assert t.nbytes == 12 and t.is_continue and t.device_type == LiteDeviceType.LITE_CPU
    t2 = LiteTensor(shapes=[4], dtype="float16")
    assert t2.layout == LiteLayout([4], "float16")
    with pytest.raises(ValueError, match="CPU only"):
        LiteTensor(device_type=LiteDeviceType.LITE_CUDA)


def test_set_data_by_copy_copies_arrays_and_fills_lists_from_the_start():
    t = LiteTensor(LiteLayout([2, 3], "float32"))
    src = np.arange(6, dtype=np.uint8).reshape(3, 2)
    t.set_data_by_copy(src)  # an array brings its shape and type, as upstream's
    src[0, 0] = 99
    np.testing.assert_array_equal(t.to_numpy(), np.arange(6, dtype=np.uint8).reshape(3, 2))
    assert t.layout == LiteLayout([3, 2], "uint8")
    t = LiteTensor(LiteLayout([2, 3], "float32"))
    t.set_data_by_copy([1, 2, 3, 4])  # a list fills the tensor's memory in its layout
    np.testing.assert_array_equal(t.to_numpy(), [[1, 2, 3], [4, 0, 0]])
    assert t.to_numpy().dtype == np.float32
    with pytest.raises(ValueError, match="7 values do not fit"):
        t.set_data_by_copy(list(range(7)))
    with pytest.raises(ValueError, match="float64"):
        t.set_data_by_copy(np.zeros(3))


def test_shared_memory_is_one_buffer():
    data = np.arange(6, dtype=np.float32)
    t = LiteTensor(LiteLayout([6], "float32"))
    t.set_data_by_share(data)
    data[2] = -1.0
    assert t.to_numpy()[2] == -1.0 and np.shares_memory(t.get_data_by_share(), data)
    other = LiteTensor()
    other.share_memory_with(t)
    other.get_data_by_share()[0] = 7.0
    assert data[0] == 7.0
    copy = LiteTensor()
    copy.copy_from(t)
    copy.get_data_by_share()[1] = 5.0
    assert data[1] == 1.0 and copy.layout == t.layout
    with pytest.raises(ValueError, match="holds int32 but the tensor holds float32"):
        t.set_data_by_share(np.zeros(6, np.int32))
    with pytest.raises(ValueError, match="not C-contiguous"):
        t.set_data_by_share(np.zeros((4, 4), np.float32)[:, ::2])


def test_reshape_slice_fill_and_concat_agree_with_numpy():
    ref = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    t = LiteTensor()
    t.set_data_by_copy(ref)
    t.reshape([6, -1])
    np.testing.assert_array_equal(t.to_numpy(), ref.reshape(6, 4))
    with pytest.raises(ValueError, match="24 elements cannot take shape"):
        t.reshape([5, 5])
    s = t.slice([1, 0], [5, 4], [2, 2])
    np.testing.assert_array_equal(s.to_numpy(), ref.reshape(6, 4)[1:5:2, 0:4:2])
    assert not s.is_continue
    s.fill_zero()  # a slice views its parent's memory
    assert (t.to_numpy()[1:5:2, 0:4:2] == 0).all() and t.to_numpy()[0, 0] == 0
    assert t.to_numpy()[0, 1] == 1
    a, b = LiteTensor(), LiteTensor()
    a.set_data_by_copy(ref[:1])
    b.set_data_by_copy(ref[1:])
    np.testing.assert_array_equal(LiteTensorConcat([a, b], 0).to_numpy(), ref)


def test_layout_setter_keeps_memory_of_the_same_size_and_renews_other():
    t = LiteTensor()
    t.set_data_by_copy(np.arange(4, dtype=np.float32))
    t.layout = [2, 2]
    np.testing.assert_array_equal(t.to_numpy(), [[0, 1], [2, 3]])
    t.layout = LiteLayout([3], "float32")
    np.testing.assert_array_equal(t.to_numpy(), [0, 0, 0])
    assert "'device_type': <LiteDeviceType.LITE_CPU: 0>" in repr(t)
