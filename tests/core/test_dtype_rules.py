"""Upstream's dtype rules for tensors (megengine/core/dtype_rules.py): the dtype a value becomes
and the checks on what can become a tensor."""
import numpy as np
import pytest

import megengine as mge
from megengine import Parameter, Tensor


@pytest.mark.parametrize("data,dtype", [
    (1, np.int32), (1.5, np.float32), (True, np.bool_), ([1, 2], np.int32), ([1, 2.5], np.float32),
    ([True, False], np.bool_), (np.arange(3, dtype=np.int64), np.int32),
    (np.ones(3, np.float64), np.float32), (np.ones(3, np.float16), np.float16),
    (np.ones(3, np.uint8), np.uint8), (np.ones(3, np.int16), np.int16),
])
def test_creation_dtype_rules(data, dtype):
    for make in (Tensor, mge.tensor, Parameter):
        assert make(data).dtype == dtype


def test_explicit_dtype_wins():
    assert Tensor([1, 2], dtype="float32").dtype == np.float32
    assert Tensor(np.ones(2), dtype=np.float64).dtype == np.float64
    assert Tensor(1.7, dtype="int32").item() == 1
    assert Tensor([1, 2], dtype="complex64").dtype == np.complex64  # upstream has complex64
    with pytest.raises(TypeError, match="datetime64"):
        Tensor([1, 2], dtype="datetime64[s]")


def test_creation_rejects_non_numbers():
    with pytest.raises(TypeError):
        Tensor("abc")
    with pytest.raises(TypeError):
        Tensor([object()])


@pytest.mark.parametrize("dtype", ["float32", "int32", "bool", "uint8", "float16"])
def test_text_with_a_dtype_is_parsed_as_numbers_or_refused(dtype):
    # as upstream 1.13 (measured): mge.tensor("1.5", dtype="float32") is 1.5, ["0", "2"] with
    # bool [False, True] (its int() reads them); "abc" raises its RuntimeError. Python's
    # int()/float() are the oracle; numpy read any non-empty string as True for bool, and its
    # ValueError named neither the tensor nor what to give
    parse = float if dtype.startswith("float") else int
    for text in ("0", "2", ["0", "2"], b"1"):
        items = text if isinstance(text, list) else [text]
        want = np.array([parse(t) for t in items]).astype(dtype)
        got = Tensor(text, dtype=dtype).numpy().reshape(-1)
        np.testing.assert_array_equal(got, want)
    for bad in ("abc", ["1", "x"], np.array(["y"])):
        for cls in (TypeError, ValueError, RuntimeError):
            with pytest.raises(cls, match=f"cannot make a tensor of dtype {dtype} from .*give "
                                          "numbers"):
                Tensor(bad, dtype=dtype)


def test_creation_names_a_none_element():
    # MegEngine/MegRL's DQNNet.inference hands a module's (logits, None) result to F.argmax:
    # numpy's own words ("inhomogeneous shape", "dtype object") do not say the None is the fault
    pair = (Tensor([[1.0, 2.0]]), None)
    with pytest.raises(TypeError, match=r"from tuple \(its element 1 is None\)"):
        Tensor(pair)
    with pytest.raises(TypeError, match=r"dtype object \(list; its element 1 is None\)"):
        Tensor([1.0, None])
    with pytest.raises(TypeError, match=r"from list: setting an array element"):
        Tensor([[1, 2], [3]])  # ragged without a None: numpy's reason alone, as before


def test_creation_copies_its_input():
    a = np.zeros(3, np.float32)
    t = Tensor(a)
    a[0] = 7
    assert t.numpy()[0] == 0


def test_creation_from_tensor_and_empty():
    t = Tensor([1.0, 2.0])
    u = Tensor(t)
    assert u.tolist() == [1.0, 2.0] and u.device == t.device
    assert Tensor().shape == (0,)


def test_explicit_integer_dtype_wraps_out_of_range_python_ints():
    # upstream's guide (functional/creation): Tensor([127, 128, 129], dtype="int8") is
    # [127 -128 -127]; numpy 2 alone raises OverflowError
    a = mge.Tensor([127, 128, 129], dtype="int8")
    assert a.dtype == np.int8
    assert a.numpy().tolist() == [127, -128, -127]
    assert mge.Tensor([256, -1], dtype="uint8").numpy().tolist() == [0, 255]
