"""Tests of megengine/functional/indexing.py: F.gather, F.scatter, F.indexing_one_hot, F.one_hot,
F.where, F.non_zero and F.cond_take against torch, and traced replays that read each call's
indices afresh."""
from functools import partial

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager

from oracle import check_against_torch

check = partial(check_against_torch, atol=1e-6)


def rand(*shape):
    return np.asarray(np.random.randn(*shape), dtype=np.float32)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather(axis):
    x = rand(3, 4, 5)
    shape = [2, 3, 4]
    shape[axis] = 6  # index may be longer than inp on the gathered axis, shorter elsewhere
    index = np.random.randint(0, x.shape[axis], shape).astype(np.int32)
    check(lambda t: F.gather(t, axis, mge.tensor(index)),
          lambda t: torch.gather(t, axis, torch.tensor(index, dtype=torch.int64)), x)


def test_gather_upstream_example_and_errors():
    out = F.gather(mge.tensor([[1, 2], [3, 4], [5, 6]]), 0, mge.tensor([[0, 2], [1, 0]]))
    np.testing.assert_array_equal(out.numpy(), [[1, 6], [3, 2]])
    x = mge.tensor(rand(3, 4))
    with pytest.raises(ValueError, match="gather"):
        F.gather(x, 0, mge.tensor([0, 1]))
    with pytest.raises(IndexError, match="gather"):
        F.gather(x, 0, mge.tensor([[3]]))
    with pytest.raises(TypeError, match="gather"):
        F.gather(x, 0, mge.tensor([[0.0]]))


@pytest.mark.parametrize("axis", [0, 1])
def test_scatter(axis):
    x, src = rand(4, 5), rand(3, 4)
    # distinct targets along axis so the result does not depend on write order
    index = np.stack([np.random.permutation(x.shape[axis])[:3] for _ in range(4)], 1)
    if axis == 1:
        index = np.stack([np.random.permutation(5)[:4] for _ in range(3)], 0)
    index = index.astype(np.int32)
    # scatter updates its inp (upstream), so scatter into a copy to see the gradient reach x
    check(lambda t, s: F.scatter(t * 1, axis, mge.tensor(index), s),
          lambda t, s: torch.scatter(t, axis, torch.tensor(index, dtype=torch.int64), s), x, src)


def test_scatter_updates_inp_like_upstream():
    inp = mge.tensor(np.zeros((3, 5), np.float32))
    source = mge.tensor([[0.9935, 0.9465, 0.2256, 0.8926, 0.4396],
                         [0.7723, 0.0718, 0.5939, 0.357, 0.4576]])
    index = mge.tensor([[0, 2, 0, 2, 1], [2, 0, 1, 1, 2]])
    out = F.scatter(inp, 0, index, source)
    assert out is inp
    expect = np.zeros((3, 5), np.float32)
    np.put_along_axis(expect, index.numpy().astype(np.int64), source.numpy(), 0)
    np.testing.assert_allclose(inp.numpy(), expect)
    with pytest.raises(ValueError, match="scatter"):
        F.scatter(inp, 0, index, mge.tensor(rand(2, 4)))


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_indexing_one_hot(axis, keepdims):
    x = rand(3, 4, 5)
    ishape = x.shape[:axis] + x.shape[axis + 1:]
    index = np.random.randint(0, x.shape[axis], ishape).astype(np.int32)

    def torch_fn(t):
        out = torch.gather(t, axis, torch.tensor(index, dtype=torch.int64).unsqueeze(axis))
        return out if keepdims else out.squeeze(axis)

    check(lambda t: F.indexing_one_hot(t, mge.tensor(index), axis, keepdims), torch_fn, x)
    with pytest.raises(ValueError, match="indexing_one_hot"):
        F.indexing_one_hot(mge.tensor(x), mge.tensor(np.zeros((3,), np.int32)), axis)


def test_indexing_one_hot_float_index_is_truncated_to_int32():
    # OMNet's labels are F.ones((B, N)) * mask, float32; upstream's operator converts them
    x = rand(2, 3, 4)
    index = np.array([[0.0, 2.0, 1.0, 2.0], [1.0, 0.0, 2.9, 0.0]], np.float32)
    as_int = torch.tensor(index.astype(np.int64))  # C-style truncation: 2.9 -> 2
    check(lambda t: F.indexing_one_hot(t, mge.tensor(index), 1),
          lambda t: torch.gather(t, 1, as_int.unsqueeze(1)).squeeze(1), x)
    mask = mge.tensor(np.array([[True, False, True, False]] * 2))
    out = F.indexing_one_hot(mge.tensor(x), mask, 1)
    np.testing.assert_array_equal(out.numpy(), np.where(mask.numpy(), x[:, 1], x[:, 0]))


def test_one_hot():
    labels = np.array([[0, 2], [1, 3]], np.int32)
    out = F.one_hot(mge.tensor(labels), 4)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(
        out.numpy(), torch.nn.functional.one_hot(torch.tensor(labels, dtype=torch.int64), 4))


def test_where():
    mask = np.random.rand(3, 4) > 0.5
    check(lambda x, y: F.where(mge.tensor(mask), x, y),
          lambda x, y: torch.where(torch.tensor(mask), x, y), rand(3, 4), rand(4))
    out = F.where(mge.tensor([True, False]), mge.tensor([1.0, 2.0]), 0.0)
    assert out.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="where"):
        F.where(mge.tensor([1, 0]), mge.tensor([1.0, 2.0]), mge.tensor([3.0, 4.0]))
    idx = F.where(mge.tensor([[True, False], [False, True]]))
    assert [i.tolist() for i in idx] == [[0, 1], [0, 1]]


def test_non_zero_and_cond_take():
    c = np.array([[1, 0, 2], [0, 3, 0]], np.int32)
    nz = F.non_zero(mge.tensor(c))
    assert nz.dtype == np.int32
    np.testing.assert_array_equal(nz.numpy(), torch.nonzero(torch.tensor(c)).numpy())
    mask = c > 0
    x = rand(2, 3)
    check(lambda t: F.cond_take(mge.tensor(mask), t)[0], lambda t: t[torch.tensor(mask)], x)
    v, i = F.cond_take(mge.tensor(mask), mge.tensor(x))
    assert i.dtype == np.int32 and i.tolist() == [0, 2, 4]


def test_traced_indexing_replays_with_new_indices():
    from megengine.jit import trace

    def f(x, idx):
        a = F.indexing_one_hot(x, idx, 1)
        b = F.gather(x, 1, F.expand_dims(idx, 1)).reshape(-1)
        c = F.one_hot(idx, 5).astype("float32").sum(1)
        # into x * 0, not F.zeros(...): a traced constant written in place keeps the write
        # across replays (a megengine.jit issue, not scatter's)
        d = F.scatter(x * 0, 1, F.expand_dims(idx, 1), F.expand_dims(a, 1))
        return a + b + c, d

    traced = trace(f, symbolic=True)
    for _ in range(3):
        x = mge.tensor(rand(4, 5))
        idx = mge.tensor(np.random.randint(0, 5, 4).astype(np.int32))
        for got, expect in zip(traced(x, idx), f(x, idx)):
            np.testing.assert_allclose(got.numpy(), expect.numpy())


def test_traced_training_step_uses_each_calls_labels():
    from megengine.jit import trace

    w = mge.Parameter(rand(3, 5))
    gm = GradManager().attach(w)

    @trace(symbolic=True)
    def step(x, label):
        with gm:
            loss = -F.indexing_one_hot(F.matmul(x, w), label, 1).mean()
            gm.backward(loss)
        return loss

    for _ in range(3):
        x, label = rand(4, 3), np.random.randint(0, 5, 4).astype(np.int32)
        w.grad = None
        step(mge.tensor(x), mge.tensor(label))
        tw = torch.tensor(w.numpy(), requires_grad=True)
        logits = torch.tensor(x) @ tw
        (-logits[torch.arange(4), torch.tensor(label, dtype=torch.int64)].mean()).backward()
        np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-6)
