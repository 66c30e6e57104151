"""Tests of megengine/core/dtype.py (upstream's megengine.core.tensor.dtype): quantized dtypes as
numpy dtypes with metadata, numpy conversions, Tensor.astype / tensor(x, dtype=q) / .numpy() on
quantized tensors, their refusal to mix with other dtypes, and save/load."""
import io

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.core.tensor import dtype

from devices import host_default_device, requires_cuda  # noqa: F401  (the fixture below)

# quantized tensors live on CPU devices only: on a CUDA machine these tests run on cpu0
pytestmark = pytest.mark.usefixtures("host_default_device")


def _half_away(v):
    return np.trunc(v + np.copysign(0.5, v))


def test_both_upstream_import_paths_reach_the_module():
    import megengine.core.tensor.dtype as by_import

    from megengine.core.tensor import dtype as by_from

    assert by_import is by_from is dtype
    assert mge.tensor([1.0]).dtype == np.float32  # the property still works on tensors


def test_quantized_dtypes_carry_upstream_metadata():
    dt = dtype.quint8(0.01, 135)
    assert isinstance(dt, np.dtype) and dt == np.uint8
    assert dict(dt.metadata["mgb_dtype"]) == {"name": "Quantized8Asymm", "scale": 0.01,
                                              "zero_point": 135}
    assert dtype.is_quantize(dt) and dtype.get_scale(dt) == 0.01
    assert dtype.get_zero_point(dt) == 135
    q = dtype.qint8(0.5)
    assert q == np.int8 and dict(q.metadata["mgb_dtype"]) == {"name": "QuantizedS8",
                                                              "scale": 0.5}
    assert dtype.qint32(2.0).metadata["mgb_dtype"]["name"] == "QuantizedS32"
    assert dtype.qint4(0.1) == np.int8 and dtype.quint4(0.1, 8) == np.uint8
    assert not dtype.is_quantize(np.int8) and not dtype.is_quantize(np.float32)
    # numpy's == ignores the scale; is_dtype_equal does not
    assert dtype.qint8(0.5) == dtype.qint8(0.25)
    assert not dtype.is_dtype_equal(dtype.qint8(0.5), dtype.qint8(0.25))
    assert dtype.is_dtype_equal(dtype.qint8(0.5), dtype.qint8(0.5))
    assert dtype.get_dtype_bit("qint4") == 4 and dtype.get_dtype_bit("bool") == 1


@pytest.mark.parametrize("bad", [lambda: dtype.quint8(0.05, 0.233),
                                 lambda: dtype.quint8(0.02, 777),
                                 lambda: dtype.quint8(0.02, -1), lambda: dtype.quint4(0.02, 18),
                                 lambda: dtype.quint8(0.02, None)])
def test_bad_zero_points_are_refused(bad):
    with pytest.raises(ValueError, match="zero_point"):
        bad()


def test_signed_dtypes_refuse_a_zero_point_and_a_missing_scale_is_named():
    meta = dtype._builtin_quant_dtypes["qint8"]
    with pytest.raises(ValueError, match="only supports symmetric"):
        dtype.create_quantized_dtype(meta, 0.1, 3)
    with pytest.raises(ValueError, match="scale is None"):
        dtype.create_quantized_dtype(meta, None, None)
    with pytest.raises(ValueError, match="no cname"):
        dtype.create_quantized_dtype(dtype._builtin_quant_dtypes["qint2"], 0.1, None)
    with pytest.raises(ValueError, match="not a quantized dtype"):
        dtype.get_scale(np.int8)
    # upstream raises RuntimeError for both queries: the error is one too
    with pytest.raises(RuntimeError, match="not a quantized dtype"):
        dtype.get_scale(np.float32)
    with pytest.raises(RuntimeError, match="has no zero point"):
        dtype.get_zero_point(dtype.qint8(0.5))


def test_numpy_conversions_round_half_to_even_as_upstreams_helpers():
    data = np.array([0.25, -0.25, 0.75, 1.3, -100.0, 100.0], np.float32)
    q = dtype.convert_to_qint8(data, dtype.qint8(0.5))
    np.testing.assert_array_equal(q, [0, -0, 2, 3, -128, 127])  # np.round: 0.5 -> 0, 1.5 -> 2
    assert dtype.is_dtype_equal(q.dtype, dtype.qint8(0.5))
    np.testing.assert_array_equal(dtype.convert_from_qint8(q),
                                  np.array([0, 0, 1, 1.5, -64, 63.5], np.float32))
    u = dtype.convert_to_quint8(data, dtype.quint8(0.5, 128))
    np.testing.assert_array_equal(u, [128, 128, 130, 131, 0, 255])
    np.testing.assert_array_equal(dtype.convert_from_quint8(u),
                                  (u.astype(np.float32) - 128) * 0.5)
    with pytest.raises(ValueError, match="should be a qint8 dtype"):
        dtype.convert_to_qint8(data, dtype.quint8(0.5, 1))
    with pytest.raises(ValueError, match="numpy ndarray"):
        dtype.convert_to_qint8([1.0], dtype.qint8(0.5))


def test_the_4_bit_32_bit_and_1_bit_numpy_conversions_clip_to_their_ranges():
    # hand-computed (upstream 1.13 measured the same): round(x / 0.5) half to even, + zero point,
    # clipped to qint4 [-8, 7], quint4 [0, 15], qint32, qint1 [0, 1]
    data = np.array([-1.3, 0.2, 0.9, 3.7, -9.0], np.float32)  # / 0.5: -2.6 0.4 1.8 7.4 -18
    cases = [("qint4", dtype.qint4(0.5), [-3, 0, 2, 7, -8], np.int8),
             ("quint4", dtype.quint4(0.5, 3), [0, 3, 5, 10, 0], np.uint8),
             ("qint32", dtype.qint32(0.5), [-3, 0, 2, 7, -18], np.int32),
             ("qint1", dtype.qint1(0.5), [0, 0, 1, 1, 0], np.int8)]
    for name, qdt, want, storage in cases:
        q = getattr(dtype, "convert_to_" + name)(data, qdt)
        assert q.dtype == storage and dtype.is_dtype_equal(q.dtype, qdt), name
        np.testing.assert_array_equal(q.astype(np.int64), want, err_msg=name)
        zero = dtype.get_zero_point(qdt) if name == "quint4" else 0
        np.testing.assert_array_equal(getattr(dtype, "convert_from_" + name)(q),
                                      (np.array(want, np.float32) - zero) * 0.5, err_msg=name)
    with pytest.raises(ValueError, match="qint4"):
        dtype.convert_to_qint4(data, dtype.qint8(0.5))


def test_numpy_conversion_to_qint32_saturates_float32_values_past_its_range():
    # float32 has no 2**31 - 1: clipped in float32 it became 2**31 and wrapped to -2**31;
    # upstream 1.13 gives the bounds (measured)
    data = np.array([3e9, -3e9, 2147483520, 2 ** 31, np.inf, -np.inf], np.float32)
    want = [2 ** 31 - 1, -2 ** 31, 2147483520, 2 ** 31 - 1, 2 ** 31 - 1, -2 ** 31]
    for arr in (data, data.astype(np.float64)):
        np.testing.assert_array_equal(dtype.convert_to_qint32(arr, dtype.qint32(1.0)), want)


def test_is_differentible_dtype_names_the_float_dtypes():
    assert dtype.is_differentible_dtype(np.float32)
    assert dtype.is_differentible_dtype(np.dtype("float16"))
    for other in (np.int32, np.uint8, np.bool_, dtype.qint8(0.1)):
        assert not dtype.is_differentible_dtype(other), other


@pytest.mark.parametrize("qdt, qmin, qmax, zp", [(dtype.qint8(0.37), -128, 127, 0),
                                                 (dtype.quint8(0.37, 100), 0, 255, 100),
                                                 (dtype.qint4(0.37), -8, 7, 0),
                                                 (dtype.qint32(0.37), -2 ** 31, 2 ** 31 - 1, 0)])
def test_astype_quantizes_half_away_from_zero_and_dequantizes(qdt, qmin, qmax, zp):
    x = np.array([[0.185, -0.185, 0.555, 1.0], [-1.0, 200.0, -200.0, 0.0]], np.float32)
    q = mge.tensor(x).astype(qdt)
    # the tensor's scale is float32, as upstream's (upstream 1.13 measured: 0.3700000047683716,
    # and is_dtype_equal(q.dtype, qdt) False)
    assert dtype.get_scale(q.dtype) == 0.3700000047683716
    assert q.dtype == qdt and not dtype.is_dtype_equal(q.dtype, qdt)
    # upstream's kernels: round(x * (1 / scale)) (4-bit: x / scale), halves away from zero,
    # + zp, saturated (upstream 1.13 measured: [[1, -1, 2, 3], [-3, top, bottom, 0]] + zp)
    scaled = x / np.float32(0.37) if qmax == 7 else x * (np.float32(1) / np.float32(0.37))
    expect = np.clip(_half_away(scaled) + zp, qmin, qmax)
    np.testing.assert_array_equal(q.numpy(), expect)
    assert dtype.is_dtype_equal(q.numpy().dtype, q.dtype)  # .numpy() keeps the scale
    back = q.astype("float32")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.numpy(), ((expect - zp) * np.float32(0.37))
                                  .astype(np.float32))


def test_astype_rounds_values_at_halves_as_upstreams_kernels():
    # upstream 1.13 measured: its 8- and 32-bit kernels quantize x * (1 / scale) in float32, its
    # 4-bit ones x / scale (values near halves tell the two apart; x / scale gave -126, -121,
    # -116, 116 below)
    x = np.array([-12.65, -12.15, -11.65, 11.65], np.float32)
    np.testing.assert_array_equal(mge.tensor(x).astype(dtype.qint8(0.1)).numpy(),
                                  [-127, -122, -117, 117])
    x = np.array([-0.65, 0.65, 0.85], np.float32)
    np.testing.assert_array_equal(mge.tensor(x).astype(dtype.qint4(0.1)).numpy(), [-6, 6, 7])
    np.testing.assert_array_equal(mge.tensor(x).astype(dtype.quint4(0.1, 8)).numpy(),
                                  [2, 14, 15])


def test_astype_rounds_whole_blocks_of_8_as_upstreams_vector_code():
    # upstream 1.13 measured: its vector code rounds trunc(v +- 0.5) in float32, which takes
    # 0.49999997 up to 1 (and an odd integer between 2**23 and 2**24 up by one), on the
    # whole blocks of 8 elements; the rest rounds exactly
    x = np.full(9, np.nextafter(np.float32(0.05), np.float32(0)))  # (times 1 / 0.1: 0.49999997)
    np.testing.assert_array_equal(mge.tensor(x).astype(dtype.qint8(0.1)).numpy(), [1] * 8 + [0])
    np.testing.assert_array_equal(mge.tensor(x).astype(dtype.quint8(0.1, 3)).numpy(),
                                  [4] * 8 + [3])
    big = mge.tensor(np.full(9, 8388609.0, np.float32)).astype(dtype.qint32(1.0))
    np.testing.assert_array_equal(big.numpy(), [8388610] * 8 + [8388609])


def test_nan_quantizes_to_the_lowest_integer():
    # upstream 1.13 measured: NaN gives the dtype's lowest integer (qint32's is -2**31)
    x = mge.tensor(np.array([np.nan, 1.0], np.float32))
    for qdt, expect in [(dtype.qint8(0.1), [-128, 10]), (dtype.quint8(0.1, 3), [0, 13]),
                        (dtype.qint32(0.1), [-2 ** 31, 10]), (dtype.qint4(0.1), [-8, 7]),
                        (dtype.quint4(0.1, 3), [0, 13])]:
        np.testing.assert_array_equal(x.astype(qdt).numpy(), expect)


def test_qint32_saturates_at_its_bounds():
    # float32 rounds 2**31 - 1 up to 2**31, whose cast wrapped a value past the top to -2**31
    x = np.array([300.0, -300.0, 1e30, 1.0], np.float32)
    q = mge.tensor(x).astype(dtype.qint32(7.45058e-08)).numpy().view(np.int32)
    one = _half_away(np.float32(1.0) / np.float32(7.45058e-08))  # (in float32, as upstream)
    assert q.tolist() == [2 ** 31 - 1, -2 ** 31, 2 ** 31 - 1, one]


def test_requantizing_goes_through_the_real_value():
    q = mge.tensor([1.0, -2.5, 3.0]).astype(dtype.qint8(0.5))
    r = q.astype(dtype.qint8(0.25))
    np.testing.assert_array_equal(r.numpy(), [4, -10, 12])
    assert q.astype(dtype.qint8(0.5)) is q  # same dtype, scale included: nothing to do
    t = mge.tensor([1.0]).astype(dtype.qint8(0.1))
    assert t.astype(dtype.qint8(0.1)) is t  # (its scale is 0.1 as float32)


def _stored(ints, qdt):
    return mge.tensor(np.array(ints).astype(qdt), dtype=qdt)


def test_requantizing_scales_the_integers_as_upstreams_typecvt():
    # upstream 1.13 measured: between 8- and 32-bit dtypes, the integers times one float32
    # ratio, src scale / dst scale (quint8 sources: src scale * (1 / dst scale)); to or from
    # 4-bit dtypes the float32 value over the dst scale (the value over the scale gave 10,
    # -10, 31, -31; 18, -18, -39, 39; -128, -122, -117, -113, -107, 0)
    q = _stored([3, -3, 9, -9], dtype.qint8(0.35))
    np.testing.assert_array_equal(q.astype(dtype.qint8(0.1)).numpy(), [11, -11, 32, -32])
    q = _stored([5, -5, -11, 11], dtype.qint8(1.295))
    np.testing.assert_array_equal(q.astype(dtype.qint8(0.37)).numpy(), [17, -17, -38, 38])
    u = _stored([18, 22, 26, 30, 34, 120], dtype.quint8(5 / 12, 120))
    np.testing.assert_array_equal(u.astype(dtype.qint8(1 / 3)).numpy(),
                                  [-128, -123, -118, -113, -108, 0])
    f = _stored([-8, -5, -3, 3, 5, 7], dtype.qint4(0.15))
    np.testing.assert_array_equal(f.astype(dtype.qint8(0.1)).numpy(), [-12, -8, -5, 5, 8, 11])
    w = _stored([1, 3, 5, -5, 8388609], dtype.qint32(0.5))
    np.testing.assert_array_equal(w.astype(dtype.qint32(1.0)).numpy(), [1, 2, 3, -3, 4194305])


def test_a_tensor_made_with_a_quantized_dtype_stores_the_integers():
    ints = np.array([3, -4, 127], np.int8)
    t = mge.tensor(ints, dtype=dtype.qint8(0.1))
    # upstream 1.13 measured: scale 0.10000000149011612, not is_dtype_equal to qint8(0.1)
    assert dtype.get_scale(t.dtype) == 0.10000000149011612 and t.dtype == np.int8
    assert not dtype.is_dtype_equal(t.dtype, dtype.qint8(0.1))
    np.testing.assert_array_equal(mge.tensor(t.numpy(), dtype=dtype.qint8(0.1)).numpy(), ints)
    assert dtype.is_dtype_equal(mge.Tensor(t, dtype=dtype.qint8(0.1)).dtype, t.dtype)
    # integers of another scale are not relabelled (upstream 1.13 measured: an error too)
    with pytest.raises(TypeError, match=r"data is qint8\(0.3\).*qint8\(0.1\).*astype"):
        mge.tensor(ints.astype(dtype.qint8(0.3)), dtype=dtype.qint8(0.1))
    np.testing.assert_array_equal(t.numpy(), ints)
    np.testing.assert_allclose(t.astype("float32").numpy(), ints * np.float32(0.1))
    p = mge.Parameter(dtype.convert_to_qint8(np.ones(3, np.float32), dtype.qint8(0.5)))
    assert dtype.get_scale(p.dtype) == 0.5 and "dtype=int8" in repr(p)  # as upstream prints


def test_layout_ops_keep_the_scale_and_concat_too():
    q = mge.tensor(np.arange(12, dtype=np.float32).reshape(3, 4)).astype(dtype.qint8(0.5))
    for out in (q.reshape(4, 3), F.flatten(q), q.transpose(1, 0), q[1:], F.relu(q),
                F.concat([q, q], axis=1)):
        assert dtype.is_dtype_equal(out.dtype, q.dtype)
    np.testing.assert_array_equal(F.concat([q, q]).numpy(), np.concatenate([q.numpy()] * 2))


def test_mixing_a_quantized_tensor_with_another_dtype_is_refused():
    q = mge.tensor([1.0, 2.0]).astype(dtype.qint8(0.5))
    with pytest.raises(TypeError, match=r"quantized tensor \(qint8\(0.5\)\).*float32.*astype"):
        q + mge.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match=r"qint8\(0.25\)"):
        F.concat([q, mge.tensor([1.0]).astype(dtype.qint8(0.25))])


def test_quantized_tensors_of_one_kind_and_another_scale_do_not_mix():
    # numpy's dtype == ignores the metadata the scale lives in: qint8(0.5) + qint8(0.25) added
    # the raw integers (0.5 + 0.25 came out as 2 * 0.5); the docs say another scale raises
    q, r = mge.tensor([1.0, 2.0]).astype(dtype.qint8(0.5)), mge.tensor([0.25, 1.0]).astype(
        dtype.qint8(0.25))
    for mixed in (lambda: q + r, lambda: q * r, lambda: F.maximum(q, r), lambda: q == r):
        with pytest.raises(TypeError, match=r"qint8\(0.5\)\) with a tensor of dtype qint8\(0.25\)"):
            mixed()
    assert dtype.is_dtype_equal(F.maximum(q, q).dtype, q.dtype)  # one scale: order ops compute


def test_one_element_of_a_quantized_tensor_keeps_its_scale():
    q = mge.tensor([1.0, -2.5, 3.0]).astype(dtype.qint8(0.5))
    assert dtype.is_dtype_equal(q[1].dtype, q.dtype) and q[1].shape == ()
    np.testing.assert_array_equal(q[1].astype("float32").numpy(), np.float32(-2.5))
    np.testing.assert_array_equal(q[2].astype(dtype.qint8(0.25)).numpy(), 12)  # 3.0 / 0.25


def test_setting_quantized_values_of_another_scale_requantizes_them():
    q = mge.tensor([1.0, -2.5, 3.0]).astype(dtype.qint8(0.5))  # integers 2, -5, 6
    fine = mge.tensor([0.0, 0.0, 0.0]).astype(dtype.qint8(0.25))
    fine[0] = q[1]  # -2.5 is -10 at scale 0.25 (it wrote the integer -5, -1.25, before)
    fine[1:] = q[1:]
    np.testing.assert_array_equal(fine.numpy(), [-10, -10, 12])
    assert dtype.is_dtype_equal(fine.dtype, dtype.qint8(0.25))
    fine[2] = fine[0]  # the same scale: the integer as it is
    np.testing.assert_array_equal(fine.numpy(), [-10, -10, -10])


def test_a_0d_tensor_quantizes_to_a_quantized_dtype():
    # numpy arithmetic on a 0-d array gives a scalar, whose astype dropped the scale: 1.0 at
    # qint8(0.25) came out as a plain int8 4, which read back as 4.0
    q = mge.tensor(1.0).astype(dtype.qint8(0.25))
    assert q.shape == () and dtype.is_dtype_equal(q.dtype, dtype.qint8(0.25))
    np.testing.assert_array_equal(q.numpy(), 4)
    assert q.astype("float32").item() == 1.0
    u = mge.tensor(-0.5).astype(dtype.quint8(0.1, 7))  # -5 + 7
    assert dtype.is_dtype_equal(u.dtype, dtype.quint8(float(np.float32(0.1)), 7))
    assert u.numpy() == 2
    assert dtype.is_dtype_equal(q.astype(dtype.qint8(0.5)).dtype, dtype.qint8(0.5))


def test_quantized_tensors_survive_save_and_load():
    q = mge.tensor([0.3, -1.2]).astype(dtype.quint8(0.1, 7))
    buf = io.BytesIO()
    mge.save({"q": q}, buf)
    buf.seek(0)
    loaded = mge.load(buf)["q"]
    assert dtype.is_dtype_equal(loaded.dtype, q.dtype)
    np.testing.assert_array_equal(loaded.numpy(), q.numpy())


def test_quantized_arrays_off_the_host_are_refused_with_the_fix():
    # a CUDA (CuPy) array is not a numpy ndarray; any such array gets the same answer
    not_numpy = np.ma.masked_array(np.ones(2, np.float32))
    with pytest.raises(TypeError, match="CPU devices only.*cpu0"):
        dtype.quantize_array(not_numpy, dtype.qint8(0.1))


def test_quantized_dtypes_are_refused_on_a_gpu_before_cupy_sees_them():
    # the scale is numpy metadata that CuPy may drop: the refusal comes first, on any machine
    with pytest.raises(TypeError, match="gpu0: quantized tensors are supported on CPU devices"):
        dtype.refuse_on_gpu(dtype.qint8(0.5), "gpu0", "a tensor on gpu0")
    dtype.refuse_on_gpu(dtype.qint8(0.5), "cpu0", "a tensor on cpu0")  # the host: fine
    dtype.refuse_on_gpu(np.dtype("int8"), "gpu0", "x")  # a plain int8: fine
    from megengine.core.ops import move_array

    q = np.array([1, 2], dtype.qint8(0.5))
    with pytest.raises(TypeError, match="moving a tensor to gpu0: .*cpu0"):
        move_array(q, "gpu0")  # Tensor.to, F.copy, set_value across devices


@requires_cuda
def test_quantized_tensors_on_a_gpu_are_refused_with_the_fix():
    q = mge.tensor([1, 2], dtype=dtype.qint8(0.5), device="cpu0")
    for make in (lambda: mge.tensor([1, 2], dtype=dtype.qint8(0.5), device="gpu0"),
                 lambda: q.to("gpu0"),
                 lambda: mge.tensor([1.0, 2.0], device="gpu0").astype(dtype.qint8(0.5))):
        with pytest.raises(TypeError, match="CPU devices only.*cpu0"):
            make()
    # a tensor made from a tensor stays on its device, quantized or not (as upstream's)
    with pytest.raises(RuntimeError, match=r"stays on its device.*t\.to\('gpu0'\)"):
        mge.Tensor(q, device="gpu0")


def test_ops_on_a_0d_quantized_tensor_keep_its_scale_as_on_arrays():
    # numpy gives a scalar, without the dtype metadata, from ops on 0-d arrays: the result read
    # back as plain int8 (x + x of 1.0 at scale 0.25 came out as 8, not 2.0); casts to a plain
    # dtype stay plain
    q0, q1 = (mge.tensor(v).astype(dtype.qint8(0.25)) for v in (1.0, [1.0]))
    for op in (lambda q: q + q, lambda q: -q, F.relu, lambda q: F.max(q),
               lambda q: F.maximum(q, q), F.sum):
        zero_d, one_d = op(q0), op(q1)
        assert dtype.is_dtype_equal(zero_d.dtype, one_d.dtype)
        np.testing.assert_array_equal(zero_d.astype("float32").numpy(),
                                      one_d.astype("float32").numpy().reshape(zero_d.shape))
    plain = q0.astype("int8")
    assert not dtype.is_quantize(plain.dtype) and plain.numpy() == 1


def test_a_dtype_name_numpy_cannot_read_raises_valueerror_as_upstreams_astype():
    # upstream 1.13 measured: x.astype("Float32") and x.astype(5) raise ValueError ("can not
    # convert to numpy.dtype from str"); numpy's own error is a TypeError, still caught here
    x = mge.tensor([1, 2])
    for bad in ("Float32", "floatx", 5):
        with pytest.raises(ValueError, match="is not a dtype.*'float32'") as info:
            x.astype(bad)
        assert isinstance(info.value, TypeError)
    with pytest.raises(ValueError, match="'Float32' is not a dtype"):
        mge.tensor([1], dtype="Float32")
    assert x.astype("float32").dtype == np.float32


def test_astype_none_raises_as_upstream():
    # upstream 1.13 measured: tensor([1, 2]).astype(None) raises RuntimeError ("unsupported
    # numpy dtype <class 'numpy.float64'>"); earlier versions of this fork cast to float64
    x = mge.tensor([1, 2])
    with pytest.raises(RuntimeError, match="dtype None is not a dtype.*'float32'"):
        x.astype(None)
