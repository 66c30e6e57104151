"""F.topk_accuracy against a numpy argsort oracle, and F.utils._assert_equal's tolerance rule."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F


def _np_topk_acc(logits, target, k):
    best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return np.mean([t in row for t, row in zip(target, best)])


def test_topk_accuracy_matches_numpy():
    rs = np.random.RandomState(0)
    logits = rs.randn(64, 10).astype(np.float32)  # continuous: no ties
    target = rs.randint(0, 10, 64).astype(np.int32)
    accs = F.topk_accuracy(mge.tensor(logits), mge.tensor(target), (1, 3, 10))
    assert isinstance(accs, list) and len(accs) == 3
    for acc, k in zip(accs, (1, 3, 10)):
        assert acc.shape == () and acc.dtype == np.float32
        np.testing.assert_allclose(acc.numpy(), _np_topk_acc(logits, target, k), rtol=1e-6)
    one = F.topk_accuracy(logits, target, 3)  # an int k gives one tensor; arrays are accepted
    np.testing.assert_allclose(one.numpy(), _np_topk_acc(logits, target, 3), rtol=1e-6)
    assert F.topk_accuracy is F.utils.topk_accuracy


def test_topk_accuracy_hand_case_and_errors():
    # rows prefer class 9, 8, ... : top-1 hits no target in 0..7, top-5 covers 5..9 -> 3 of 8
    logits = np.arange(80, dtype=np.float32).reshape(8, 10)
    target = np.arange(8, dtype=np.int32)
    top1, top5 = F.topk_accuracy(logits, target, (1, 5))
    assert float(top1.numpy()) == 0.0 and float(top5.numpy()) == 3 / 8
    # a sequence of one k gives one Tensor, as upstream 1.13's (measured), not a list of one
    one = F.topk_accuracy(logits, target, (5,))
    assert isinstance(one, mge.Tensor) and float(one.numpy()) == 3 / 8
    with pytest.raises(ValueError, match="each k"):
        F.topk_accuracy(logits, target, 11)
    with pytest.raises(ValueError, match="target"):
        F.topk_accuracy(logits, target[:4], 1)


def test_assert_equal_tolerance_is_absolute_below_one_relative_above():
    x = F.ones((2, 3))
    assert F.utils._assert_equal(x, x + 5e-5) is x
    big = mge.tensor(np.full((2,), 1000.0, np.float32))
    F.utils._assert_equal(big, big + 0.05)  # 5e-5 relative
    with pytest.raises(RuntimeError, match="exceeds maxerr"):
        F.utils._assert_equal(x, x + 0.1)
    with pytest.raises(RuntimeError, match="exceeds maxerr"):
        F.utils._assert_equal(mge.tensor([0.5]), mge.tensor([0.5002]))  # 2e-4 absolute
    F.utils._assert_equal(x, x + 0.05, maxerr=0.1)
    with pytest.raises(RuntimeError, match="shapes differ"):
        F.utils._assert_equal(x, F.ones((3, 2)))
    with pytest.raises(RuntimeError):
        F.utils._assert_equal(mge.tensor([float("nan")]), mge.tensor([1.0]))


def test_topk_accuracy_of_a_k_that_is_no_int_names_it():
    # Python's "'>' not supported between instances of 'int' and 'str'" came out here before
    logits, target = mge.tensor(np.eye(3, dtype="float32")), mge.tensor([0, 1, 2])
    with pytest.raises(TypeError, match=r"topk_accuracy: topk must be an int or a sequence of "
                                        r"ints, got \('1', 2\)"):
        F.topk_accuracy(logits, target, ("1", 2))
