"""Tensor indexing edge cases (empty index lists, empty tensors) against numpy, values and grads."""
import numpy as np
import pytest

import megengine as mge
from megengine.autodiff import GradManager


@pytest.mark.parametrize("shape,index", [
    ((10, 10, 0), ([],)),
    ((10, 10, 0), ([], [], [])),
    ((4, 5), ([],)),
    ((4, 5), ([], [])),
    ((4, 5), (slice(None), [])),
    ((4, 5), ([[]],)),
    ((10, 10, 0), ([1, 2, 3], [4, 5, 6])),
], ids=str)
def test_empty_index_list_selects_nothing_like_numpy(shape, index):
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    # numpy needs the explicit integer dtype that our [] must imply
    ref = a[tuple(np.asarray(i, dtype=np.intp) if isinstance(i, list) else i for i in index)]
    out = mge.tensor(a)[index]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    np.testing.assert_array_equal(out.numpy(), ref)


def test_set_with_empty_index_list_changes_nothing_and_grad_is_zero():
    a = np.random.RandomState(0).randn(3, 4).astype(np.float32)
    x = mge.tensor(a)
    gm = GradManager().attach([x])
    with gm:
        y = x * 1
        y[[]] = y[[]]
        y[[], []] = 5.0
        gm.backward(y.sum() + x[[]].sum())
    np.testing.assert_array_equal(y.numpy(), a)
    np.testing.assert_array_equal(x.grad.numpy(), np.ones_like(a))


def test_float_index_list_is_still_an_error():
    with pytest.raises(IndexError):
        mge.tensor(np.zeros((3, 3), np.float32))[[0.5, 1.0]]
