"""Tests of megengine/functional/creation.py: F.zeros/ones/full and their _like forms, F.arange,
F.linspace, F.eye and F.copy, with the dtypes and counts upstream documents."""
import io
from functools import partial

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
import megengine.module as M

from oracle import check_against_torch, raises_as_upstream

check = partial(check_against_torch, atol=1e-6)


def rand(*shape):
    return np.asarray(np.random.randn(*shape), dtype=np.float32)


def test_zeros_ones_full():
    z = F.zeros((2, 3))
    assert z.dtype == np.float32 and z.shape == (2, 3) and not z.numpy().any()
    o = F.ones(4, dtype="int32")
    assert o.dtype == np.int32 and o.tolist() == [1, 1, 1, 1]
    assert F.ones([2, 2]).numpy().sum() == 4
    assert F.full((2, 3), 6).dtype == np.int32 and F.full((2, 3), 6).numpy().max() == 6
    assert F.full((2,), 1.5).dtype == np.float32
    assert F.full((2,), True).dtype == np.bool_
    assert F.full((2,), 3, dtype="float32").dtype == np.float32
    assert F.zeros((2,), device="cpu0").device == "cpu0"
    with pytest.raises(ValueError, match="zeros"):
        F.zeros((2, -1))


def test_like_functions_keep_dtype_and_shape():
    x = mge.tensor(np.arange(6, dtype=np.int32).reshape(2, 3))
    for f, v in ((F.zeros_like, 0), (F.ones_like, 1)):
        y = f(x)
        assert y.dtype == np.int32 and y.shape == (2, 3) and (y.numpy() == v).all()
    y = F.full_like(x, 2)
    assert y.dtype == np.int32 and (y.numpy() == 2).all()
    assert F.full_like(mge.tensor([1.0]), 0.5).tolist() == [0.5]


def test_arange_linspace_eye():
    a = F.arange(5)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a.numpy(), np.arange(5))
    np.testing.assert_array_equal(F.arange(1, 4).numpy(), [1, 2, 3])
    np.testing.assert_allclose(F.arange(0, 1, 0.25).numpy(), torch.arange(0, 1, 0.25).numpy())
    np.testing.assert_array_equal(F.arange(5, 0, -2).numpy(), [5, 3, 1])
    assert F.arange(3, dtype="int32").dtype == np.int32
    np.testing.assert_allclose(F.linspace(2.0, 3.0, 5).numpy(), torch.linspace(2, 3, 5).numpy())
    assert F.linspace(1, 10, 10).dtype == np.float32
    np.testing.assert_array_equal(F.eye(3).numpy(), torch.eye(3).numpy())
    np.testing.assert_array_equal(F.eye(4, 6).numpy(), torch.eye(4, 6).numpy())
    with pytest.raises(ValueError, match="arange"):
        F.arange(0, 3, 0)


def test_copy_is_differentiable():
    check(lambda t: F.copy(t, "cpu0") * 2, lambda t: t.clone() * 2, rand(3))
    x = mge.tensor([1.0, 2.0])
    y = F.copy(x)
    y[0] = 5.0
    assert x.tolist() == [1.0, 2.0]


def test_copy_without_a_device_is_upstreams_identity_operator():
    # upstream's F.copy(x) applies builtin.Identity when no device is given (a Copy names one),
    # so M.Identity dumps as an Identity operator; the gradient passes through either way
    from megengine.jit import trace
    from megengine.utils.network import Network

    check(lambda t: F.copy(t) * 2, lambda t: t.clone() * 2, rand(3))
    f = trace(lambda t: M.Identity()(t) + F.copy(t, t.device), symbolic=True,
              capture_as_const=True)
    f(mge.tensor([1.0, 2.0]))
    file = io.BytesIO()
    f.dump(file)
    file.seek(0)
    types = [o.type for o in Network.load(file).all_oprs]
    assert "Identity" in types and "Copy" in types


def test_like_functions_take_arrays():
    a = np.zeros((2, 2), np.int32)
    assert F.ones_like(a).dtype == np.int32 and F.full_like(a, 3).numpy().sum() == 12


def test_arange_counts_as_upstream_in_float32():
    # upstream's guide (functional/creation): arange(7.8, 8.4, 0.05) has 12 values, not numpy's
    # 13, because upstream computes ceil((stop - start) / step) on float32 tensors
    a = F.arange(7.8, 8.4, 0.05)
    assert a.shape == (12,)
    np.testing.assert_allclose(a.numpy(), 7.8 + 0.05 * np.arange(12), rtol=1e-6)
    np.testing.assert_allclose(F.arange(2, 3, 0.1).numpy(), 2 + 0.1 * np.arange(10), rtol=1e-6)
    # integer arguments count exactly, also past float32's exact range
    assert F.arange(0, 2 ** 24 + 3, 2 ** 23, dtype="int32").numpy().tolist() == [
        0, 2 ** 23, 2 ** 24]
    np.testing.assert_array_equal(F.arange(5, 0, -2).numpy(), torch.arange(5, 0, -2).numpy())
    assert F.arange(3, 1).shape == (0,)


def test_a_shape_inside_a_one_tuple_is_unwrapped_as_upstream():
    # upstream's broadcast/reshape unwrap it (`_expand_args`); MegEngine/invis calls
    # F.zeros(shape) with shape = ([c, 1, k, k],)
    assert F.zeros(([2, 3],)).shape == (2, 3)
    assert F.ones(((2, 3),)).shape == (2, 3)
    np.testing.assert_array_equal(F.full(([2],), 7).numpy(), [7, 7])
    assert F.zeros((mge.tensor([2, 3]),)).shape == (2, 3)
    x = mge.tensor(np.arange(6, dtype=np.float32))
    assert F.reshape(x, ([2, 3],)).shape == (2, 3)
    assert F.broadcast_to(mge.tensor([[1.0], [2.0]]), ((None, 3),)).shape == (2, 3)
    with pytest.raises(TypeError, match="shape entries must be ints"):
        F.zeros(([2, 3], 4))


def test_fill_values_outside_an_integer_dtype_wrap_as_tensor_makes_them():
    # upstream's Fill and FillLike cast the value, as Tensor([127, 128, 129], dtype="int8") is
    # [127, -128, -127] in its guide (numpy 2 raised OverflowError here); torch wraps uint8 too
    x8, xu8 = mge.tensor([1, 2], dtype="int8"), mge.tensor([1, 2], dtype="uint8")
    assert F.full((2,), 300, dtype="int8").tolist() == mge.tensor([300, 300], "int8").tolist()
    assert F.full_like(x8, 300).tolist() == [44, 44]
    assert F.full_like(xu8, -3).tolist() == torch.full_like(torch.tensor(xu8.numpy()), -3).tolist()
    assert F.full((3,), -3, dtype="uint8").tolist() == [253] * 3
    assert F.full((2,), 2 ** 40).dtype == np.int32  # (upstream's int32 for an int)
    y = F.full_like(mge.tensor([1, 2], dtype="int32"), 2.7)
    assert y.dtype == np.int32 and y.tolist() == [2, 2]


def test_a_tensor_fill_value_gives_its_number_on_any_device():
    # (a GPU tensor's value cannot become a host array implicitly: MGE_SIM_CUDA=1 runs this on
    # one; F.full refused it there)
    v = mge.tensor(3.5)
    assert F.full((2,), v).tolist() == [3.5, 3.5] and F.full((2,), v).dtype == np.float32
    assert F.full_like(mge.tensor([1, 2]), v).tolist() == [3, 3]
    assert F.full((1,), mge.tensor(2.5, dtype="float16")).dtype == np.float16


@pytest.mark.parametrize("call, upstream, match", [
    pytest.param(lambda x: F.linspace(0, 1, -1), RuntimeError, "num must be >= 0, got -1",
                 id="linspace"),
    pytest.param(lambda x: F.arange(0, 5, 0), RuntimeError, "step must not be 0", id="arange"),
    pytest.param(lambda x: F.ones((-1, 2)), RuntimeError, "has a negative dimension", id="ones"),
    pytest.param(lambda x: F.zeros((2, -3)), RuntimeError, "has a negative dimension",
                 id="zeros"),
    pytest.param(lambda x: F.eye(-1), RuntimeError, "has a negative dimension", id="eye"),
    pytest.param(lambda x: F.full((-2,), 1.0), ValueError, "has a negative dimension", id="full"),
])
def test_bad_arguments_raise_what_upstream_raises(call, upstream, match):
    # upstream 1.13 measured: RuntimeError from its C++ checks (arange's "can not convert
    # float value inf to int"), ValueError from full's Python check; earlier versions of this fork raised a plain ValueError.
    # The error is also a ValueError (what the mistake is) and says what was wrong
    raises_as_upstream(call, (3, 4), upstream, match)


@pytest.mark.parametrize("call", [
    lambda: F.zeros((2,), dtype="no_such"), lambda: F.ones((2,), dtype="flaot32"),
    lambda: F.full((2,), 1.0, dtype="no_such"), lambda: F.eye(2, dtype="no_such"),
    lambda: F.arange(3, dtype="no_such"), lambda: F.linspace(0, 1, 3, dtype="no_such"),
])
def test_an_unknown_dtype_name_says_which_function_and_what_to_pass(call):
    # upstream 1.13 measured: RuntimeError ("Unable to cast") from zeros, ones and eye,
    # TypeError from arange and linspace; numpy's "data type 'no_such' not understood" came
    # out here before, naming no function
    for error in (TypeError, RuntimeError, ValueError):
        with pytest.raises(error, match=r"^(zeros|ones|full|eye|arange|linspace): '\w+' is not "
                                        "a dtype .*use a dtype name such as 'float32'"):
            call()


@pytest.mark.parametrize("call, named", [
    (lambda: F.zeros(None), "zeros: shape"), (lambda: F.ones(None), "ones: shape"),
    (lambda: F.full(None, 2.0), "full: shape"), (lambda: F.zeros(shape=None), "zeros: shape"),
    (lambda: F.eye(None), "eye: N"),
    (lambda: F.reshape(mge.tensor([5.0]), None), "reshape: target_shape"),
    (lambda: F.broadcast_to(mge.tensor([5.0]), None), "broadcast_to: shape"),
])
def test_a_none_shape_raises_naming_the_function_and_argument(call, named):
    # upstream 1.13 raises TypeError for F.zeros(None) and F.broadcast_to(x, None); this fork
    # took None for a scalar's shape (), so a shape that a function returned by mistake made
    # a 0-d tensor
    with pytest.raises(TypeError, match=f"^{named} is None; pass a shape"):
        call()


def test_an_empty_shape_is_a_scalars():
    # (upstream 1.13's full gives 0-d here; its zeros and ones fail on the shape's first use)
    for shape in ((), []):
        assert F.zeros(shape).shape == () and F.ones(shape).tolist() == 1
        assert F.full(shape, 2).tolist() == 2
    assert F.reshape(mge.tensor([5.0]), ()).tolist() == 5.0


def test_linspace_of_a_num_that_is_no_int_names_it():
    # (int()'s "int() argument must be ... not 'list'" came out here before)
    with pytest.raises(TypeError, match=r"linspace: num must be an int, got \[3, 3\]"):
        F.linspace(0, 1, [3, 3])
    assert F.linspace(0, 1, mge.tensor(3)).tolist() == [0.0, 0.5, 1.0]  # (a size tensor: its value)


def test_arange_reads_a_bound_holding_one_number_and_names_any_other():
    # upstream 1.13 reads F.arange([1], 4) as F.arange(1, 4) (as numpy's arange does not)
    np.testing.assert_array_equal(F.arange([1], 4).numpy(), np.arange(1, 4, dtype=np.float32))
    np.testing.assert_array_equal(F.arange(0, 4, np.array([2])).numpy(), [0.0, 2.0])
    for bad, name in (([1, 2], "start"), ("x", "start"), (None, "start")):
        with pytest.raises(TypeError, match=f"arange: {name} must be a number"):
            F.arange(bad, 4)
    with pytest.raises(TypeError, match="arange: step must be a number"):
        F.arange(0, 4, [1, 2])


def test_full_value_errors_name_the_function_and_the_value():
    # a sequence value broadcasts as numpy's full broadcasts it (upstream's too)
    np.testing.assert_array_equal(F.full((2, 3), [1.0, 2.0, 3.0]).numpy(),
                                  np.full((2, 3), [1.0, 2.0, 3.0], np.float32))
    np.testing.assert_array_equal(F.full_like(mge.tensor(np.zeros((2, 3), np.int32)), [1, 2, 3])
                                  .numpy(), np.full((2, 3), [1, 2, 3], np.int32))
    with pytest.raises(ValueError, match=r"full: value of shape \(2,\) does not broadcast to "
                                         r"the shape \(2, 3\)"):
        F.full((2, 3), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"full_like: value of shape \(2,\) does not broadcast"):
        F.full_like(mge.tensor([1.0, 2.0, 3.0]), [1.0, 2.0])
    for bad in ("x", mge.tensor([1.0, 2.0, 3.0])):
        with pytest.raises(TypeError, match="full: value must be a number"):
            F.full((2, 3), bad)


@pytest.mark.parametrize("start", [[0, 0], "1"])
def test_linspace_of_a_bound_that_is_no_number_raises(start):
    # float() took "1" (upstream 1.13 raises RuntimeError) and a list raised float()'s words
    with pytest.raises(RuntimeError, match="^linspace: start must be a number"):
        F.linspace(start, 4, 3)


def test_linspace_of_a_bound_holding_one_number_takes_it():
    # as upstream reads F.linspace([1], 4, 3) (and numpy.linspace's bound)
    np.testing.assert_allclose(F.linspace([1], 4, 3).numpy(), np.linspace(1, 4, 3))


def test_full_like_of_a_string_value_raises():
    # numpy parsed "0.5" into the float dtype; upstream 1.13 refuses it ("Unable to cast")
    with pytest.raises(RuntimeError, match="^full_like: value must be a number"):
        F.full_like(mge.tensor([1.0, 2.0]), "0.5")
