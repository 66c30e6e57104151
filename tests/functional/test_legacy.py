"""F's MegEngine 0.x names (megengine/functional/legacy.py) against 0.x's documented examples,
numpy and PyTorch."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager


def test_renamed_functions_are_their_1x_equivalents():
    x = np.array([[-2.0, 0.5], [1.5, 3.0]], "float32")
    np.testing.assert_array_equal(F.clamp(mge.tensor(x), -1, 1).numpy(), np.clip(x, -1, 1))
    np.testing.assert_array_equal(F.clamp(mge.tensor(x), upper=1).numpy(), np.minimum(x, 1))
    np.testing.assert_allclose(F.power(mge.tensor(np.abs(x)), 3).numpy(), np.abs(x) ** 3,
                               rtol=1e-6)
    a, b = mge.tensor(x), mge.tensor(x[::-1].copy())
    np.testing.assert_allclose(F.divide(a, b).numpy(), x / x[::-1])
    np.testing.assert_allclose(F.multiply(a, b).numpy(), x * x[::-1])
    np.testing.assert_allclose(F.subtract(a, b).numpy(), x - x[::-1])
    y = np.array([-0.5, 0.25], "float32")
    np.testing.assert_allclose(F.arccos(mge.tensor(y)).numpy(), np.arccos(y), rtol=1e-6)
    np.testing.assert_allclose(F.arcsin(mge.tensor(y)).numpy(), np.arcsin(y), rtol=1e-6)
    np.testing.assert_array_equal(F.dimshuffle(mge.tensor(x), (1, "x", 0)).numpy(),
                                  x.T[:, None, :])


def test_top_k_0x_example_and_descending():
    # 0.x's documented example: the 5 smallest, sorted, with their indices
    data = mge.tensor(np.array([2, 4, 6, 8, 7, 5, 3, 1], dtype=np.float32))
    top, idx = F.top_k(data, 5)
    np.testing.assert_array_equal(top.numpy(), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(idx.numpy(), [7, 0, 6, 1, 5])
    top, idx = F.top_k(data, 2, descending=True)
    np.testing.assert_array_equal(top.numpy(), [8, 7])
    np.testing.assert_array_equal(idx.numpy(), [3, 4])


def test_add_axis_remove_axis_apply_positions_in_turn():
    x = mge.tensor([1, 2])
    assert F.add_axis(x, 0).shape == (1, 2)
    assert F.add_axis(x, (0, 2)).shape == (1, 2, 1)  # 0.x's documented example
    assert F.add_axis(x, -1).shape == (2, 1)
    y = mge.tensor(np.array([1, 2], dtype=np.int32).reshape(1, 1, 2, 1))
    out = F.remove_axis(y, (0, 0, 1))  # 0.x's documented example: one axis at a time
    assert out.shape == (2,)
    np.testing.assert_array_equal(out.numpy(), [1, 2])
    assert F.remove_axis(y, -1).shape == (1, 1, 2)
    with pytest.raises(ValueError, match="has size 2, not 1"):
        F.remove_axis(y, 2)
    with pytest.raises(ValueError, match="out of range"):
        F.add_axis(x, 3)


def test_add_axis_gradient_flows():
    x = mge.tensor(np.arange(6, dtype="float32").reshape(2, 3))
    gm = GradManager().attach([x])
    with gm:
        y = F.remove_axis(F.add_axis(x, (0, 3)), 3)
        gm.backward((y * y).sum())
    assert y.shape == (1, 2, 3)
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())


def test_accuracy_0x_example_and_return_forms():
    # 0.x's documented example: top1 0, top5 0.375
    logits = mge.tensor(np.arange(80, dtype=np.int32).reshape(8, 10))
    target = mge.tensor(np.arange(8, dtype=np.int32))
    top1, top5 = F.accuracy(logits, target, (1, 5))
    np.testing.assert_allclose([top1.numpy(), top5.numpy()], [0.0, 0.375])
    # 0.x returned one tensor for an int k and for a 1-tuple alike
    single = F.accuracy(logits, target, (5,))
    np.testing.assert_allclose(single.numpy(), 0.375)
    np.testing.assert_allclose(F.accuracy(logits, target).numpy(), 0.0)


def test_matrix_mul_and_batched_match_numpy_and_check_ranks():
    rs = np.random.RandomState(0)
    a, b = rs.randn(3, 4).astype("float32"), rs.randn(4, 5).astype("float32")
    np.testing.assert_allclose(F.matrix_mul(mge.tensor(a), mge.tensor(b)).numpy(), a @ b,
                               rtol=1e-5, atol=1e-6)
    ba, bb = rs.randn(2, 3, 4).astype("float32"), rs.randn(2, 4, 5).astype("float32")
    np.testing.assert_allclose(F.batched_matrix_mul(mge.tensor(ba), mge.tensor(bb)).numpy(),
                               ba @ bb, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2-d"):
        F.matrix_mul(mge.tensor(ba), mge.tensor(bb))
    with pytest.raises(ValueError, match="3-d"):
        F.batched_matrix_mul(mge.tensor(a), mge.tensor(b))


def test_clamp_and_the_matrix_products_name_themselves_not_what_they_compute_with():
    # (clamp is F.clip; matrix_mul and batched_matrix_mul are F.matmul: their errors named those)
    x = mge.tensor(np.ones((2, 5), "float32"))
    with pytest.raises(TypeError, match="^clamp: lower must be a number or a Tensor.*got str"):
        F.clamp(x, "0", 1)
    with pytest.raises(TypeError, match="^clamp: upper must be a number or a Tensor.*got dict"):
        F.clamp(x, 0, {})
    with pytest.raises(ValueError, match=r"^clamp: shapes \(2, 5\) and \(2,\) do not broadcast"):
        F.clamp(x, 0, [1, 1])
    with pytest.raises(ValueError, match="^clamp: at least one of lower and upper"):
        F.clamp(x)
    with pytest.raises(ValueError, match=r"^matrix_mul: shapes \(2, 5\) and \(4, 4\) do not "
                                         "match"):
        F.matrix_mul(x, mge.tensor(np.ones((4, 4), "float32")))
    with pytest.raises(ValueError, match=r"^batched_matrix_mul: shapes \(1, 2, 5\) and "):
        F.batched_matrix_mul(F.expand_dims(x, 0), mge.tensor(np.ones((1, 4, 4), "float32")))
    # (the operator names matmul, the function it is)
    with pytest.raises(ValueError, match=r"^matmul: shapes \(2, 5\) and \(4, 4\)"):
        x @ mge.tensor(np.ones((4, 4), "float32"))


def test_shapeof_zero_grad_identity():
    x = mge.tensor(np.ones((2, 3, 4), "float32"))
    s = F.shapeof(x)
    assert s.dtype == np.int32
    np.testing.assert_array_equal(s.numpy(), [2, 3, 4])
    assert int(F.shapeof(x, 1).numpy()) == 3
    w = mge.tensor(np.array([1.0, 2.0], "float32"))
    gm = GradManager().attach([w])
    with gm:
        y = w * F.zero_grad(w) + F.identity(w)  # d/dw: zero_grad(w) + 1, the first w constant
        gm.backward(y.sum())
    np.testing.assert_allclose(w.grad.numpy(), [2.0, 3.0])


def test_identity_keeps_the_dtype():
    # 0.x's identity operator returns the input's dtype (a bool stays bool: x + 0 made int32)
    for dt in ("bool", "int8", "float16", "int32"):
        x = mge.tensor(np.array([1, 0, 1]).astype(dt), dtype=dt)
        y = F.identity(x)
        assert y.dtype == x.dtype and y.tolist() == x.tolist() and y is not x
    from megengine.core.tensor.dtype import qint8

    # (x + 0 refused it; quantized tensors live on the host)
    q = mge.tensor(np.array([1, 2], np.int8), dtype=qint8(0.5), device="cpu0")
    assert F.identity(q).dtype == q.dtype and F.identity(q).tolist() == q.tolist()


def test_nll_loss_matches_0x_example_and_torch():
    # 0.x's documented example: nll_loss(log(softmax(x))) equals cross_entropy_with_softmax
    data = mge.tensor(np.array([[1, 0.5], [0.3, 1.2]], dtype=np.float32))
    label = mge.tensor(np.ones((2,), dtype=np.int32))
    loss = F.nll_loss(F.log(F.softmax(data)), label)
    np.testing.assert_allclose(loss.numpy(), 0.6576154, rtol=1e-5)
    rs = np.random.RandomState(1)
    logp = np.log(rs.dirichlet(np.ones(5), size=6)).astype("float32")
    lab = np.array([0, 4, -1, 2, -1, 1], "int32")  # -1: 0.x's ignore_index
    _check_nll_loss_against_torch(logp, lab)


def _check_nll_loss_against_torch(logp, lab):
    """F.nll_loss and its gradient against torch's, 0.x's ignore_index -1."""
    p = mge.tensor(logp)
    gm = GradManager().attach([p])
    with gm:
        loss = F.nll_loss(p, mge.tensor(lab))
        gm.backward(loss)
    tp = torch.tensor(logp, requires_grad=True)
    tl = torch.nn.functional.nll_loss(tp, torch.tensor(lab, dtype=torch.long), ignore_index=-1)
    tl.backward()
    np.testing.assert_allclose(loss.numpy(), tl.item(), rtol=1e-6)
    np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-6)


def test_nll_loss_ignores_a_nan_or_infinity_under_an_ignored_label():
    # torch's nll_loss reads nothing for an ignored label (a product by a 0/1 mask made the
    # loss NaN); the gradient there is 0
    logp = np.log(np.full((4, 3), 1 / 3, np.float32))
    logp[1] = [np.nan, -np.inf, np.inf]
    _check_nll_loss_against_torch(logp, np.array([0, -1, 2, 1], np.int32))


def test_nll_loss_label_errors_name_nll_loss_and_its_arguments():
    # (indexing_one_hot, which picks the labels, named itself, its src and its index)
    logp = mge.tensor(np.log(np.full((2, 3), 1 / 3, "float32")))
    # a label out of range, not ignore_index: an IndexError, as torch's nll_loss raises
    with pytest.raises(IndexError):
        torch.nn.functional.nll_loss(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(IndexError, match=r"^nll_loss: label values must be in \[0, 3\) or be "
                                         r"ignore_index \(-1\), got min 0 and max 3"):
        F.nll_loss(logp, mge.tensor([0, 3], dtype="int32"))
    with pytest.raises(IndexError, match=r"ignore_index \(-2\), got min -1 and max 0"):
        F.nll_loss(logp, mge.tensor([0, -1], dtype="int32"), ignore_index=-2)
    with pytest.raises(ValueError, match=r"^nll_loss: label of shape \(2, 3\) must be the shape "
                                         r"of pred \(2, 3, 2\) without axis 1"):
        F.nll_loss(F.broadcast_to(F.expand_dims(logp, 2), (2, 3, 2)),
                   mge.tensor(np.zeros((2, 3), "int32")))
    with pytest.raises(TypeError, match=r"^nll_loss: ignore_index must be a number, got \[-1, "):
        F.nll_loss(logp[:1], mge.tensor([0], dtype="int32"), ignore_index=[-1, -1])
    with pytest.raises(ValueError, match="^nll_loss: axis 4 is out of range for 2 dims") as e:
        F.nll_loss(logp, mge.tensor([0, 1], dtype="int32"), axis=4)
    assert e.value.__context__ is None or e.value.__suppress_context__  # (one error shown)


def test_triplet_margin_loss_matches_torch():
    rs = np.random.RandomState(2)
    a, pos, neg = (rs.randn(4, 3).astype("float32") for _ in range(3))
    # (a Tensor margin, as 0.x programs may pass, stays an operand)
    for p, margin in ((1, 0.5), (2, 0.5), (2, mge.tensor(0.5))):
        ta = torch.tensor(a, requires_grad=True)
        ref = torch.nn.functional.triplet_margin_loss(ta, torch.tensor(pos), torch.tensor(neg),
                                                      margin=0.5, p=p, eps=0.0)
        ref.backward()
        x = mge.tensor(a)
        gm = GradManager().attach([x])
        with gm:
            loss = F.triplet_margin_loss(x, mge.tensor(pos), mge.tensor(neg), margin=margin, p=p)
            gm.backward(loss)
        np.testing.assert_allclose(loss.numpy(), ref.item(), rtol=1e-5)
        np.testing.assert_allclose(x.grad.numpy(), ta.grad.numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        F.triplet_margin_loss(mge.tensor(a[0]), mge.tensor(pos[0]), mge.tensor(neg[0]))


def test_triplet_margin_loss_of_float16_rounds_once():
    # distances near 3 cancel: float16 steps of 0.002 on the way left it 0.0016 (6 ulps) off
    a = np.array([[-2.766, -1.259, -2.818], [-0.4617, 2.303, -1.387]], np.float16)
    pos = np.array([[-0.631, 2.635, -1.478], [-1.051, -1.4375, 1.4375]], np.float16)
    neg = np.array([[-0.6836, 1.015, 1.087], [-2.25, -1.78, -0.1364]], np.float16)
    exact = torch.nn.functional.triplet_margin_loss(
        *(torch.tensor(v, dtype=torch.float64) for v in (a, pos, neg)), margin=0.5, eps=0.0)
    loss = F.triplet_margin_loss(mge.tensor(a), mge.tensor(pos), mge.tensor(neg), margin=0.5)
    assert loss.dtype == np.float16
    assert abs(float(loss.numpy()) - exact.item()) <= 2.0 ** -12  # (an ulp at 0.38)


def test_batch_norm2d_matches_torch_in_training():
    rs = np.random.RandomState(3)
    x = rs.randn(2, 3, 4, 4).astype("float32")
    rm, rv = np.zeros((1, 3, 1, 1), "float32"), np.ones((1, 3, 1, 1), "float32")
    w, b = rs.rand(1, 3, 1, 1).astype("float32"), rs.rand(1, 3, 1, 1).astype("float32")
    mrm, mrv = mge.tensor(rm), mge.tensor(rv)
    out = F.batch_norm2d(mge.tensor(x), mrm, mrv, mge.tensor(w), mge.tensor(b), True, 0.9, 1e-5)
    trm, trv = torch.zeros(3), torch.ones(3)
    ref = torch.nn.functional.batch_norm(torch.tensor(x), trm, trv, torch.tensor(w.ravel()),
                                         torch.tensor(b.ravel()), True, 0.1, 1e-5)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mrm.numpy().ravel(), trm.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="NCHW"):
        F.batch_norm2d(mge.tensor(x[0]), mrm, mrv, None, None)


def test_add_update_is_0x_in_place_affine_update():
    # 0.x: dest = alpha * dest + beta * delta + bias, in place (hand-computed cases)
    d = mge.Parameter(np.array([1.0, -2.0, 3.0], "float32"))
    before = d
    out = F.add_update(d, mge.tensor(np.array([10.0, 20.0, 30.0], "float32")), alpha=0.5,
                       beta=2.0, bias=1.0)
    assert out is before
    np.testing.assert_allclose(d.numpy(), [21.5, 40.0, 62.5])
    F.add_update(d, 1.0)  # defaults: dest + delta, the scalar broadcasts
    np.testing.assert_allclose(d.numpy(), [22.5, 41.0, 63.5])
    # MegEngine/Models' WGAN weight clipping: alpha=0 assigns, even over an inf
    w = mge.Parameter(np.array([np.inf, -0.5, 0.01], "float32"))
    F.add_update(w, F.clamp(w, lower=-3e-2, upper=3e-2), alpha=0)
    np.testing.assert_allclose(w.numpy(), [3e-2, -3e-2, 0.01])
    with pytest.raises(ValueError, match="broadcast"):
        F.add_update(w, mge.tensor(np.ones(2, "float32")))
    with pytest.raises(TypeError, match="in place"):
        F.add_update(np.ones(3), 1.0)


def test_add_update_inside_a_traced_step_is_replayed():
    from megengine import jit

    w = mge.Parameter(np.array([0.5, -0.5], "float32"))

    @jit.trace
    def step(x):
        F.add_update(w, x, alpha=0.5)
        return w * 1

    for i in range(3):
        step(mge.tensor(np.array([1.0, 2.0], "float32")))
    # three times w = 0.5 w + x, by hand: [0.5,-0.5] -> [1.25,1.75] -> [1.625,2.875] -> ...
    np.testing.assert_allclose(w.numpy(), [1.8125, 3.4375])


def test_triplet_margin_loss_of_a_margin_that_is_no_number_names_it():
    # Python's "'>' not supported between instances of 'str' and 'int'" came out here before
    x = mge.tensor(np.ones((2, 3), "float32"))
    with pytest.raises(TypeError, match="triplet_margin_loss: margin must be a number, got 'm'"):
        F.triplet_margin_loss(x, x, x, margin="m")


def test_shapeof_of_a_bad_axis_names_it():
    # numpy's "index 5 is out of bounds for axis 0 with size 2" came out here before
    x = mge.tensor(np.ones((2, 3), "float32"))
    assert F.shapeof(x, -1).item() == 3
    with pytest.raises(ValueError, match="shapeof: axis 5 is out of range for 2 dims"):
        F.shapeof(x, 5)
    with pytest.raises(TypeError, match="shapeof: axis must be an int, got str"):
        F.shapeof(x, "0")
