"""Tests of megengine/functional/ctc.py: F.nn.ctc_loss against torch and finite differences."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager

from oracle import check_against_torch


def _ctc_case(seed=0):
    rs = np.random.RandomState(seed)
    t, n, c, s = 12, 3, 5, 4
    logits = rs.randn(t, n, c).astype(np.float32)
    label = rs.randint(1, c, (n, s)).astype(np.int32)
    label[0, 1] = label[0, 0]  # a repeated symbol needs a blank between the two
    return logits, np.array([12, 10, 7], np.int32), label, np.array([4, 3, 2], np.int32)


def test_ctc_loss_upstream_example():
    pred = mge.tensor([[[0.0614, 0.9386], [0.8812, 0.1188]], [[0.699, 0.301], [0.2572, 0.7428]]])
    loss = F.nn.ctc_loss(pred, mge.tensor([2, 2]), mge.tensor([1, 1]), mge.tensor([1, 1]))
    np.testing.assert_allclose(loss.item(), 0.1504417, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ctc_loss_against_torch(reduction):
    logits, lengths, label, label_lengths = _ctc_case()
    # F.nn.ctc_loss takes probabilities, torch log-probabilities: both from the same logits (torch's
    # CTC gradient is only the true one when chained through log_softmax)
    check_against_torch(
        lambda z: F.nn.ctc_loss(F.softmax(z, axis=-1), lengths, label, label_lengths,
                                reduction=reduction),
        lambda z: torch.nn.functional.ctc_loss(z.log_softmax(-1), torch.tensor(label),
                                               torch.tensor(lengths), torch.tensor(label_lengths),
                                               reduction=reduction),
        logits, rtol=1e-5, atol=1e-5)


def test_ctc_loss_gradient_in_probabilities_by_finite_differences():
    logits, lengths, label, label_lengths = _ctc_case(1)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    x = mge.tensor(p)
    gm = GradManager().attach([x])
    with gm:
        gm.backward(F.nn.ctc_loss(x, lengths, label, label_lengths, reduction="sum"))
    v = np.random.RandomState(2).randn(*p.shape).astype(np.float32)
    eps = 1e-3

    def loss(q):
        return F.nn.ctc_loss(q, lengths, label, label_lengths, reduction="sum").item()

    numeric = (loss(p + eps * v) - loss(p - eps * v)) / (2 * eps)
    np.testing.assert_allclose((x.grad.numpy() * v).sum(), numeric, rtol=2e-3)


def test_ctc_loss_concatenated_labels_blank_and_errors():
    logits, lengths, label, label_lengths = _ctc_case()
    p = F.softmax(mge.tensor(logits), axis=-1)
    packed = np.concatenate([row[:k] for row, k in zip(label, label_lengths)])
    a = F.nn.ctc_loss(p, lengths, label, label_lengths, reduction="none")
    b = F.nn.ctc_loss(p, lengths, packed, label_lengths, reduction="none")
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    # another blank index: the same as torch with that blank
    lab = np.where(label == 4, 0, label)
    got = F.nn.ctc_loss(p, lengths, lab, label_lengths, blank=4, reduction="none")
    want = torch.nn.functional.ctc_loss(torch.tensor(logits).log_softmax(-1), torch.tensor(lab),
                                        torch.tensor(lengths), torch.tensor(label_lengths),
                                        blank=4, reduction="none")
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="pred_lengths"):
        F.nn.ctc_loss(p, [13, 1, 1], label, label_lengths)
    with pytest.raises(ValueError, match="sum\\(label_lengths\\)"):
        F.nn.ctc_loss(p, lengths, packed[:-1], label_lengths)
    with pytest.raises(ValueError, match="reduction"):
        F.nn.ctc_loss(p, lengths, label, label_lengths, reduction="avg")


def test_traced_ctc_loss_replays_each_calls_labels():
    from megengine.jit import trace

    def f(p, lengths, label, label_lengths):
        return F.nn.ctc_loss(p, lengths, label, label_lengths, reduction="none")

    traced = trace(f, symbolic=True)
    for seed in range(3):
        logits, lengths, label, label_lengths = _ctc_case(seed)
        args = [mge.tensor(a) for a in (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True),
                                         lengths, label, label_lengths)]
        np.testing.assert_allclose(traced(*args).numpy(), f(*args).numpy(), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ctc_loss_a_label_equal_to_blank_is_a_symbol_as_in_torch(reduction):
    # upstream's recursion (and torch's) lets a position skip the one before it whenever its
    # symbol differs from the one two back; a label that is the blank index is no exception
    logits, lengths, label, label_lengths = _ctc_case(3)
    # the blank index below, between other symbols and first; not last: torch's backward
    # assumes a sample's last symbol is no blank and its gradient there is off
    label = np.array([[1, 2, 4, 3], [3, 2, 1, 1], [2, 4, 1, 1]], np.int32)
    check_against_torch(
        lambda z: F.nn.ctc_loss(F.softmax(z, axis=-1), lengths, label, label_lengths, blank=2,
                                reduction=reduction),
        lambda z: torch.nn.functional.ctc_loss(z.log_softmax(-1), torch.tensor(label),
                                               torch.tensor(lengths), torch.tensor(label_lengths),
                                               blank=2, reduction=reduction),
        logits, rtol=1e-5, atol=1e-5)


def test_ctc_loss_of_an_alignment_longer_than_its_frames_is_finite_as_upstream():
    # upstream clamps the first frame's probabilities at float32's tiny, the positions no path
    # can start from included: one frame for the label (1, 1) (which needs three frames) ends
    # at two positions that each start at log(tiny), so the loss is -log(2 * tiny), not inf
    tiny = np.finfo(np.float32).tiny
    pred = mge.tensor([[[0.3, 0.7]]])
    loss = F.nn.ctc_loss(pred, [1], [[1, 1]], [2], reduction="sum")
    np.testing.assert_allclose(loss.item(), -np.log(2 * np.float64(tiny)), rtol=1e-6)
    # and its gradient is the clamped recursion's: finite differences over three frames that
    # cannot hold the label (2, 2, 1), whose paths all start from a clamped position
    rs = np.random.RandomState(4)
    p = rs.dirichlet(np.ones(3), size=(3, 1)).astype(np.float32)
    label, lengths, label_lengths = [[2, 2, 1]], [3], [3]
    x = mge.tensor(p)
    gm = GradManager().attach([x])
    with gm:
        out = F.nn.ctc_loss(x, lengths, label, label_lengths, reduction="sum")
        gm.backward(out)
    assert np.isfinite(out.item())
    eps = 1e-2  # the loss is about 87: float32 rounding needs a wide step
    for t, c in [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0)]:
        d = np.zeros_like(p)
        d[t, 0, c] = eps
        loss = [F.nn.ctc_loss(mge.tensor(q), lengths, label, label_lengths, reduction="sum")
                .item() for q in (p + d, p - d)]
        numeric = (loss[0] - loss[1]) / (2 * eps)
        np.testing.assert_allclose(x.grad.numpy()[t, 0, c], numeric, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_ctc_loss_clamps_the_unreachable_starts_at_float32s_tiny_for_every_dtype(dtype):
    # upstream's alpha is float32 whatever pred's dtype, so its clamp is float32's tiny: an
    # ordinary float16 loss matches torch's (float16's tiny, 6e-5, let a path skipping the
    # label weigh as much as the real ones: 8.14 for 8.32), and the one-frame case is 86.6
    p = np.tile(np.array([0.9, 1e-4, 0.1 - 1e-4]), (3, 1, 1)).astype(dtype)
    want = torch.nn.functional.ctc_loss(
        torch.tensor(np.log(p.astype(np.float64))), torch.tensor([[1]]), torch.tensor([3]),
        torch.tensor([1]), reduction="sum").item()
    loss = F.nn.ctc_loss(mge.tensor(p, dtype=dtype), [3], [[1]], [1], reduction="sum")
    assert loss.dtype == np.dtype(dtype)
    np.testing.assert_allclose(loss.item(), want, rtol=1e-3)
    short = F.nn.ctc_loss(mge.tensor([[[0.3, 0.7]]], dtype=dtype), [1], [[1, 1]], [2],
                          reduction="sum")
    np.testing.assert_allclose(short.item(), -np.log(2 * np.float64(np.finfo(np.float32).tiny)),
                               rtol=1e-3)


def test_ctc_loss_of_a_blank_that_is_no_int_names_it():
    # Python's "'<=' not supported between instances of 'int' and 'str'" came out here before
    pred = mge.tensor(np.full((4, 2, 3), 1 / 3, "float32"))
    with pytest.raises(TypeError, match="ctc_loss: blank must be an int, got 'x'"):
        F.nn.ctc_loss(pred, mge.tensor([4, 4]), mge.tensor([[1, 2], [1, 1]]), mge.tensor([2, 2]),
                      blank="x")


def test_ctc_loss_of_lengths_that_are_no_integers_names_them():
    # int()'s "int() argument must be ... not 'NoneType'" came out here before
    pred = mge.tensor(np.full((4, 2, 3), 1 / 3, "float32"))
    with pytest.raises(TypeError, match="ctc_loss: pred_lengths must be integers, got None"):
        F.nn.ctc_loss(pred, None, mge.tensor([[1, 2], [1, 1]]), mge.tensor([2, 2]))
    with pytest.raises(TypeError, match="ctc_loss: label_lengths must be integers, got 'x'"):
        F.nn.ctc_loss(pred, [4, 4], [[1, 2], [1, 1]], "x")
