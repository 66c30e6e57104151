"""Tests of megengine/data/collator.py: stacking samples into batches."""
import collections

import numpy as np
import pytest

from megengine.data.collator import Collator


def test_arrays_numbers_and_tuples():
    samples = [(np.full((2, 3), i, dtype=np.uint8), i, float(i) / 2, "s{}".format(i)) for i in range(4)]
    images, ints, floats, names = Collator().apply(samples)
    assert images.shape == (4, 2, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
    np.testing.assert_array_equal(images[:, 0, 0], [0, 1, 2, 3])
    assert ints.tolist() == [0, 1, 2, 3] and ints.dtype.kind == "i"
    assert floats.dtype == np.float64 and floats.tolist() == [0.0, 0.5, 1.0, 1.5]
    # upstream 1.13 measured: strings come back as the sequence the collator was given, here
    # a tuple sample's field (zip's tuple)
    assert names == ("s0", "s1", "s2", "s3")


def test_strings_come_back_as_the_sequence_they_came_in():
    # upstream 1.13 measured: a DataLoader's batch of names is a tuple (its transform's
    # apply_batch gives a tuple), a dict's field a list
    assert Collator().apply(("a", "bc")) == ("a", "bc")
    assert Collator().apply([{"name": "a"}, {"name": "b"}]) == {"name": ["a", "b"]}
    assert Collator().apply([[1, "a"], [2, "b"]])[1] == ("a", "b")


def test_arrays_of_strings_stack():
    # upstream 1.13 measured: np.stack of two ["a", "b"] arrays, dtype <U1; only object
    # arrays are refused
    out = Collator().apply([np.array(["a", "b"]), np.array(["c", "d"])])
    assert out.dtype == np.dtype("<U1") and out.tolist() == [["a", "b"], ["c", "d"]]
    assert Collator().apply([np.array(b"x"), np.array(b"y")]).tolist() == [b"x", b"y"]


def test_a_field_mixing_arrays_and_numbers():
    # upstream 1.13 measured: np.stack decides; equal shapes stack, others raise ValueError
    np.testing.assert_array_equal(Collator().apply([np.array(1.5), 2]), [1.5, 2.0])
    with pytest.raises(ValueError, match=r"different shapes \[\(\), \(2,\)\]"):
        Collator().apply([np.ones(2), 3])


def test_numpy_scalars_dicts_and_namedtuples():
    Point = collections.namedtuple("Point", "x y")
    samples = [{"p": Point(np.float32(i), np.int32(-i)), "v": np.arange(2) + i} for i in range(3)]
    out = Collator().apply(samples)
    assert isinstance(out["p"], Point)
    assert out["p"].x.dtype == np.float32 and out["p"].x.tolist() == [0, 1, 2]
    assert out["p"].y.tolist() == [0, -1, -2]
    np.testing.assert_array_equal(out["v"], [[0, 1], [1, 2], [2, 3]])


def test_nested_lists():
    out = Collator().apply([[np.zeros(1), [1, 2.5]], [np.ones(1), [3, 4.5]]])
    np.testing.assert_array_equal(out[0], [[0.0], [1.0]])
    assert out[1][0].tolist() == [1, 3] and out[1][1].tolist() == [2.5, 4.5]


def test_errors_say_what_went_wrong():
    with pytest.raises(ValueError, match="different shapes"):
        Collator().apply([np.zeros((2, 2)), np.zeros((3, 2))])
    with pytest.raises(ValueError, match="different numbers of elements"):
        Collator().apply([(1, 2), (1,)])
    with pytest.raises(TypeError, match="found"):
        Collator().apply([object(), object()])
    with pytest.raises(TypeError, match="dtype object"):
        Collator().apply([np.array([None]), np.array([None])])


def test_megengine_tensors_are_stacked_into_host_arrays():
    # RIFE's VimeoDataset returns F.concat((img0, img1, gt), 0), a Tensor, per sample
    import megengine as mge

    samples = [(mge.tensor(np.arange(6, dtype=np.uint8).reshape(2, 3) + i), i) for i in range(3)]
    images, labels = Collator().apply(samples)
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape == (3, 2, 3)
    np.testing.assert_array_equal(images, np.stack([np.arange(6).reshape(2, 3) + i for i in range(3)]))
    assert labels.tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match="mixing megengine Tensors"):
        Collator().apply([mge.tensor([1.0]), np.array([1.0], dtype=np.float32)])
