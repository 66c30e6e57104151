"""Tests of megengine/functional/tensor.py: shapes, joins, padding and shape arguments vs torch
(creation: test_creation.py; indexing: test_indexing.py)."""
from functools import partial

import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager

from oracle import check_against_torch, check_float16_against_torch, raises_as_upstream
from oracle import check_second_order_against_torch as check_second_order


check = partial(check_against_torch, atol=1e-6)


def rand(*shape):
    return np.asarray(np.random.randn(*shape), dtype=np.float32)


# ----- shapes -----

def test_reshape_flatten():
    x = rand(2, 3, 4)
    check(lambda t: F.reshape(t, (4, -1)), lambda t: t.reshape(4, -1), x)
    check(lambda t: F.flatten(t, 1), lambda t: torch.flatten(t, 1), x)
    check(lambda t: F.flatten(t, 0, 1), lambda t: torch.flatten(t, 0, 1), x)
    with pytest.raises(ValueError, match="reshape"):
        F.reshape(mge.tensor(x), (5, -1))


def test_transpose_and_swapaxes():
    x = rand(2, 3, 4)
    check(lambda t: F.transpose(t, (2, 0, 1)), lambda t: t.permute(2, 0, 1), x)
    check(lambda t: F.swapaxes(t, 0, 2), lambda t: t.transpose(0, 2), x)


def test_transpose_with_x_and_dropped_dims():
    x = rand(2, 1, 3)
    check(lambda t: F.transpose(t, (2, "x", 0)), lambda t: t.permute(2, 1, 0), x)
    check(lambda t: F.transpose(t, (0, "x", 2, "x")), lambda t: t[:, :, :, None], x)
    with pytest.raises(ValueError, match="transpose"):
        F.transpose(mge.tensor(x), (1, 0))  # drops dim 2 of size 3
    with pytest.raises(RuntimeError, match="transpose"):  # (upstream's, measured)
        F.transpose(mge.tensor(x), (1, 0))


def test_expand_dims_squeeze():
    x = rand(2, 3)
    check(lambda t: F.expand_dims(t, 0), lambda t: t.unsqueeze(0), x)
    check(lambda t: F.expand_dims(t, -1), lambda t: t.unsqueeze(-1), x)
    assert F.expand_dims(mge.tensor(x), (0, 3)).shape == (1, 2, 3, 1)


@pytest.mark.parametrize("axis", [1, -2, (1, 2), (-2, -3)])
def test_expand_dims_axis_out_of_range(axis):
    # numpy refuses these axes of a 0-d array; upstream raises a RuntimeError (its shape check)
    x = np.array(1, np.float32)
    with pytest.raises(ValueError):
        np.expand_dims(x, axis)
    with pytest.raises(RuntimeError, match="expand_dims: axis"):
        F.expand_dims(mge.tensor(x), axis)
    with pytest.raises(ValueError, match="expand_dims: axis"):
        F.expand_dims(mge.tensor(x), axis)
    y = rand(1, 2, 1, 3, 1)
    check(lambda t: F.squeeze(t), lambda t: t.squeeze(), y)
    check(lambda t: F.squeeze(t, 2), lambda t: t.squeeze(2), y)
    assert F.squeeze(mge.tensor(y), (0, -1)).shape == (2, 1, 3)
    with pytest.raises(ValueError, match="squeeze"):
        F.squeeze(mge.tensor(y), 1)


@pytest.mark.parametrize("src,dst", [((3,), (2, 3)), ((3, 1), (3, 4)), ((1,), (2, 2, 2)),
                                     ((2, 1, 3), (4, 2, 5, 3))], ids=str)
def test_broadcast_to(src, dst):
    check(lambda t: F.broadcast_to(t, dst), lambda t: t.broadcast_to(dst), rand(*src))


def test_broadcast_to_its_own_shape_is_a_new_tensor():
    # upstream's Broadcast always makes a new tensor: writing into the result leaves the input
    # as it was (earlier versions of this fork returned the input itself, so z[0] = 5 wrote
    # into y), and gradients flow through it (by hand: d(sum(z * z))/dy = 2y)
    y = mge.tensor([1.0, 2.0])
    with GradManager().attach(y) as gm:
        z = F.broadcast_to(y, (2,))
        gm.backward((z * z).sum())
    assert z is not y
    np.testing.assert_array_equal(y.grad.numpy(), [2.0, 4.0])
    z[0] = 5
    np.testing.assert_array_equal(y.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(z.numpy(), [5.0, 2.0])


def test_broadcast_to_none_keeps_a_dim_and_errors():
    # upstream's test_broadcast_auto_infer
    x = mge.tensor(rand(1, 2, 3))
    assert F.broadcast_to(x, (1, None, 3)).shape == (1, 2, 3)
    assert F.broadcast_to(x, (mge.tensor(2), None, 2, 3)).shape == (2, 1, 2, 3)
    assert F.broadcast_to(mge.tensor(rand(3, 1)), (2, None, 4)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="None"):
        F.broadcast_to(x, (1, -1, 3))
    with pytest.raises(ValueError, match="None"):
        F.broadcast_to(x, (None, 1, 2, 3))
    with pytest.raises(ValueError, match="broadcast_to"):
        F.broadcast_to(mge.tensor(rand(3)), (4,))


@pytest.mark.parametrize("src,dst", [((2, 1, 3), (2, 3, 4)), ((2, 1, 3), (4, 1, 3)),
                                     ((2, 1, 3), (1, 3))], ids=str)
def test_broadcast_to_incompatible_raises_valueerror_and_runtimeerror(src, dst):
    # torch is the oracle for which shapes do not broadcast; upstream raises RuntimeError,
    # numpy-style code catches ValueError: both must work
    with pytest.raises(RuntimeError):
        torch.zeros(src).broadcast_to(dst)
    for cls in (RuntimeError, ValueError):
        with pytest.raises(cls, match=r"cannot broadcast shape \(2, 1, 3\)"):
            F.broadcast_to(mge.tensor(rand(*src)), dst)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    shapes = [[2, 3, 4] for _ in range(3)]
    for s, n in zip(shapes, (1, 2, 3)):
        s[axis] = n
    arrays = [rand(*s) for s in shapes]
    check(lambda *ts: F.concat(ts, axis), lambda *ts: torch.cat(ts, axis), *arrays)


def test_concat_promotes_and_checks():
    out = F.concat([mge.tensor([1, 2]), mge.tensor([0.5])])
    assert out.dtype == np.float32 and out.tolist() == [1.0, 2.0, 0.5]
    with pytest.raises(ValueError, match="concat"):
        F.concat([mge.tensor(rand(2, 3)), mge.tensor(rand(2, 4))])
    check(lambda t: F.concat([t]), lambda t: torch.cat([t]), rand(2))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(axis):
    arrays = [rand(2, 3) for _ in range(3)]
    check(lambda *ts: F.stack(ts, axis), lambda *ts: torch.stack(ts, axis), *arrays)
    with pytest.raises(ValueError, match="stack"):
        F.stack([mge.tensor(rand(2)), mge.tensor(rand(3))])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 2, -2])
def test_stack_and_concat_of_strided_inputs_and_two_dtypes_match_torch(dtype, axis):
    # Stack joins views with the new axis by concatenate: strided inputs at odd sizes, as the
    # engine's own ops leave them (a transpose, a reversal and a broadcast are views)
    rs = np.random.RandomState(21)
    arrays = [rs.randn(7, 3, 5), rs.randn(5, 3, 7), rs.randn(5, 1, 7)]
    ps = [mge.Parameter(a.astype(dtype), dtype=dtype) for a in arrays]
    ts = [torch.tensor(a.astype(dtype), requires_grad=True) for a in arrays]

    def inputs(lib, p):
        if lib is torch:
            return [p[0].permute(2, 1, 0), p[1].flip(0), p[2].expand(5, 3, 7)]
        return [p[0].transpose(2, 1, 0), p[1][::-1], F.broadcast_to(p[2], (5, 3, 7))]

    gm = GradManager().attach(ps)
    with gm:
        xs = inputs(F, ps)
        s, c = F.stack(xs, axis), F.concat(xs, axis)
        ds = rs.randn(*s.shape).astype(dtype)
        dc = rs.randn(*c.shape).astype(dtype)
        gm.backward([s, c], [mge.tensor(ds, dtype=dtype), mge.tensor(dc, dtype=dtype)])
    xt = inputs(torch, ts)
    ts_s, ts_c = torch.stack(xt, axis), torch.cat(xt, axis)
    torch.autograd.backward([ts_s, ts_c], [torch.from_numpy(ds), torch.from_numpy(dc)])
    assert s.dtype == c.dtype == dtype
    np.testing.assert_array_equal(s.numpy(), ts_s.detach().numpy())
    np.testing.assert_array_equal(c.numpy(), ts_c.detach().numpy())
    for p, t in zip(ps, ts):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_stack_promotes_mixed_dtypes_and_has_a_second_order():
    out = F.stack([mge.tensor([1, 2], dtype="int32"), mge.tensor([0.5, 1.5])], axis=1)
    assert out.dtype == np.float32 and out.tolist() == [[1.0, 0.5], [2.0, 1.5]]
    check_second_order(lambda x: (F.stack([x * x, x * x * x], -1) * mge.tensor(
        np.arange(12.0).reshape(2, 3, 2))).sum(), lambda t: (torch.stack(
            [t * t, t * t * t], -1) * torch.arange(12.0).reshape(2, 3, 2)).sum(), rand(2, 3))
    check_second_order(lambda x: (F.concat([x * x, x * x * x], 0) * mge.tensor(
        np.arange(12.0).reshape(4, 3))).sum(), lambda t: (torch.cat(
            [t * t, t * t * t], 0) * torch.arange(12.0).reshape(4, 3)).sum(), rand(2, 3))


def test_stack_and_concat_take_arrays_axes_and_one_gradient_of_several_inputs():
    # the all-tensor call skips the list's conversion and the axis's normaliser: arrays still
    # go to the first tensor's device, a numpy or negative axis still works, a bad one is named,
    # and concat's backward still splits at the right places when only one input is attached
    a, b = rand(2, 3), rand(2, 3)
    x = mge.tensor(a, device="cpu1")
    for f, tf in ((F.stack, torch.stack), (F.concat, torch.cat)):
        for axis in (np.int64(1), -1, 0):
            out = f([x, b], axis=axis)
            assert out.device == x.device
            np.testing.assert_array_equal(
                out.numpy(), tf([torch.tensor(a), torch.tensor(b)], int(axis)).numpy())
        with pytest.raises(TypeError, match="axis must be an int"):
            f([x, x], axis=True)
        with pytest.raises(ValueError, match="out of range"):
            f([x, x], axis=3)
    p, q = mge.Parameter(rand(2, 3)), mge.tensor(rand(2, 5))
    tp = torch.tensor(p.numpy(), requires_grad=True)
    dy = rand(2, 13)
    gm = GradManager().attach(p)
    with gm:
        gm.backward(F.concat([q, p, q], axis=1), mge.tensor(dy))
    torch.cat([torch.tensor(q.numpy()), tp, torch.tensor(q.numpy())], 1).backward(
        torch.tensor(dy))
    np.testing.assert_array_equal(p.grad.numpy(), tp.grad.numpy())


def test_split():
    x = rand(10, 20)
    check(lambda t: F.split(t, 3), lambda t: torch.tensor_split(t, 3), x)
    check(lambda t: F.split(t, [6, 17], axis=1), lambda t: torch.tensor_split(t, [6, 17], 1), x)
    assert [p.shape for p in F.split(mge.tensor(x), 3)] == [(4, 20), (3, 20), (3, 20)]
    # an unused part gets zero gradient
    check(lambda t: F.split(t, 2)[1] * 1, lambda t: torch.tensor_split(t, 2)[1] * 1, x)
    with pytest.raises(ValueError, match="split"):
        F.split(mge.tensor(x), 11)
    with pytest.raises(ValueError) as info:
        F.split(mge.tensor(x), [5, 3])
    assert str(info.value) == "Invalid nsplits_or_secions: [5, 3]"  # upstream's, word for word
    assert "must be increasing" in info.value.__notes__[0]  # ours, shown in the traceback


def test_split_takes_a_count_as_a_0d_tensor():
    # upstream 1.13 measured on (4, 3): tensor(2) and tensor(2.0) give 2 parts of 2 rows,
    # tensor(3) parts of 2, 1 and 1 rows, tensor([2]) (sections) 2 and 2; a TracedModule passes
    # a count computed from x.shape so. Earlier versions of this fork raised TypeError.
    x = mge.tensor(np.arange(12, dtype=np.float32).reshape(4, 3))
    for count, rows in [(mge.tensor(2), [2, 2]), (mge.tensor(2.0), [2, 2]),
                        (mge.tensor(3), [2, 1, 1]), (mge.tensor([2]), [2, 2])]:
        parts = F.split(x, count)
        assert [p.shape for p in parts] == [(r, 3) for r in rows]
        np.testing.assert_array_equal(np.concatenate([p.numpy() for p in parts]), x.numpy())


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_repeat(axis):
    check(lambda t: F.repeat(t, 3, axis), lambda t: torch.repeat_interleave(t, 3, axis), rand(2, 3))


def test_repeat_takes_one_count_as_upstream_and_says_so_for_a_list():
    # found by the fuzzer (repeat_forms): a list reached int() and raised numpy's TypeError
    x = mge.tensor(np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(F.repeat(x, np.int64(2)).numpy(), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(F.repeat(x, mge.tensor(2)).numpy(), [0, 0, 1, 1, 2, 2])
    for counts in ([1, 2, 1], mge.tensor([1, 2, 1])):
        with pytest.raises(TypeError, match="repeats must be one int.*per-element"):
            F.repeat(x, counts)


@pytest.mark.parametrize("reps", [(2, 1), (1, 3), (2, 2, 3), (0, 1), (1, 0), (2, 0, 1)], ids=str)
def test_tile(reps):
    check(lambda t: F.tile(t, reps), lambda t: t.repeat(*reps), rand(2, 3))


def test_meshgrid():
    a, b = rand(3), rand(2)
    for indexing in ("xy", "ij"):
        check(lambda x, y: F.meshgrid(x, y, indexing=indexing),
              lambda x, y: torch.meshgrid(x, y, indexing=indexing), a, b)


def test_flip_roll():
    x = rand(3, 4)
    check(lambda t: F.flip(t, 1), lambda t: torch.flip(t, (1,)), x)
    check(lambda t: F.flip(t, (0, 1)), lambda t: torch.flip(t, (0, 1)), x)
    check(lambda t: F.roll(t, 1, 0), lambda t: torch.roll(t, 1, 0), x)
    check(lambda t: F.roll(t, -2, 1), lambda t: torch.roll(t, -2, 1), x)
    check(lambda t: F.roll(t, 5), lambda t: torch.roll(t, 5), x)
    check(lambda t: F.roll(t, (1, 3), (0, 1)), lambda t: torch.roll(t, (1, 3), (0, 1)), x)
    with pytest.raises(TypeError, match="roll"):
        F.roll(mge.tensor(x), (1, 2), 0)


@pytest.mark.parametrize("k", [0, 1, -2])
def test_diag(k):
    check(lambda t: F.diag(t, k), lambda t: torch.diag(t, k), rand(3))
    check(lambda t: F.diag(t, k), lambda t: torch.diag(t, k), rand(3, 5))
    with pytest.raises(ValueError, match="diag"):
        F.diag(mge.tensor(rand(2, 2, 2)))


# ----- padding -----

@pytest.mark.parametrize("mode,torch_mode", [("constant", "constant"), ("edge", "replicate"),
                                             ("replicate", "replicate"), ("reflect", "reflect")])
def test_pad(mode, torch_mode):
    x = rand(2, 3, 4, 5)
    width = ((0, 0), (0, 0), (1, 2), (2, 1))
    torch_pad = (2, 1, 1, 2)
    check(lambda t: F.pad(t, width, mode=mode),
          lambda t: torch.nn.functional.pad(t, torch_pad, mode=torch_mode), x)


def test_pad_constant_value_and_leading_pairs():
    x = rand(2, 3)
    check(lambda t: F.pad(t, ((1, 0),), constant_value=-1.5),
          lambda t: torch.nn.functional.pad(t, (0, 0, 1, 0), value=-1.5), x)
    with pytest.raises(ValueError, match="pad"):
        F.pad(mge.tensor(x), ((1, 1),), mode="circular")
    with pytest.raises(ValueError, match="pad"):
        F.pad(mge.tensor(x), ((0, 0), (3, 0)), mode="reflect")
    empty = mge.tensor(np.zeros((2, 0), np.float32))  # (numpy's own error, torch refuses too)
    with pytest.raises(ValueError, match=r"^pad: edge padding .* no edge to repeat on an empty "
                                         r"axis of shape \(2, 0\); pad it with mode='constant'"):
        F.pad(empty, ((0, 0), (1, 1)), mode="edge")
    assert F.pad(empty, ((1, 0), (0, 0)), mode="edge").shape == (3, 0)  # not the empty axis


def test_pad_accepts_upstream_misspelt_pad_witdth_keyword():
    # upstream 1.8-1.9 named the argument pad_witdth; CREStereo's AGCL passes it by keyword
    x = rand(1, 2, 3, 4)
    check(lambda t: F.nn.pad(t, pad_witdth=((0, 0), (0, 0), (1, 1), (4, 4)), mode="replicate"),
          lambda t: torch.nn.functional.pad(t, (4, 4, 1, 1), mode="replicate"), x)
    with pytest.raises(TypeError, match="both pad_width and"):
        F.pad(mge.tensor(x), ((1, 1),), pad_witdth=((1, 1),))
    with pytest.raises(TypeError, match="missing pad_width"):
        F.pad(mge.tensor(x))

# ----- shape arithmetic and shape arguments, as upstream -----

def test_concat_of_shape_pieces_and_ints_reshapes():
    x = mge.tensor(rand(2, 3, 8))
    shape = F.concat([x.shape[:-1], 2, 4])
    assert shape.dtype == np.int32 and shape.tolist() == [2, 3, 2, 4]
    np.testing.assert_array_equal(F.reshape(x, shape).numpy(), x.numpy().reshape(2, 3, 2, 4))
    assert x.reshape(F.concat([x.shape[:-2], 6, -1])).shape == (2, 6, 4)
    flat = mge.tensor(rand(6))
    assert F.concat([flat.shape[:-1], 2, 3]).dtype == np.int32  # an empty piece stays int
    assert flat.reshape(F.concat([flat.shape[:-1], 2, 3])).shape == (2, 3)
    # 0-d tensors count as one-element vectors, as upstream's interpolate relies on
    assert F.concat([mge.tensor(3), mge.tensor(4)]).tolist() == [3, 4]
    check(lambda a, b: F.concat([a, b]), lambda a, b: torch.cat([a.reshape(1), b]),
          np.float32(2.0), rand(3))


@pytest.mark.parametrize("shape", [(2, 3), [2, 3], np.array([2, 3]), mge.tensor([2, 3]),
                                   (mge.tensor(2), np.int64(3))])
def test_shape_arguments_of_every_form(shape):
    assert F.zeros(shape).shape == (2, 3)
    assert F.ones(shape, dtype="int32").shape == (2, 3)
    assert F.full(shape, 1.5).shape == (2, 3)
    assert F.broadcast_to(mge.tensor([1.0, 2.0, 3.0]), shape).shape == (2, 3)
    assert F.reshape(F.arange(6), shape).shape == (2, 3)
    assert F.eye(shape).shape == (2, 3)


def test_bad_shapes_say_so():
    assert F.eye(mge.tensor(3)).shape == (3, 3)
    with pytest.raises(TypeError, match="shape"):
        F.zeros((2.5, 3))
    with pytest.raises(TypeError, match="integers"):
        F.ones(np.array([2.5]))
    with pytest.raises(ValueError, match="at most one -1"):
        F.reshape(F.arange(6), (-1, -1))
    # a size below -1 (numpy 2 reads it as -1), through the method too: upstream's RuntimeError
    for error in (ValueError, RuntimeError):
        with pytest.raises(error, match="at most one -1"):
            F.arange(6).reshape(-2, 3)


@pytest.mark.parametrize("call, upstream", [
    (lambda x: F.tile(x, "ab"), RuntimeError), (lambda x: F.clip(x, "a", 1), RuntimeError),
    (lambda x: F.repeat(x, 2, 5), AssertionError), (lambda x: F.dot(x, x), AssertionError),
    (lambda x: F.nn.pad(x, ((0, 0), (-5, 0))), RuntimeError),
    # its kernels' assertions; pybind's TypeError for no tensors; float("fro")'s RuntimeError
    (lambda x: F.topk_accuracy(x, mge.tensor([0, 1]), topk=5), RuntimeError),
    (lambda x: F.topk_accuracy(x, mge.tensor([0]), topk=1), RuntimeError),
    (lambda x: F.embedding(mge.tensor([5]), x), RuntimeError),
    (lambda x: F.norm(x, ord="fro", axis=1), RuntimeError),
    (lambda x: F.zeros("ab"), RuntimeError),
    (lambda x: F.concat([]), TypeError), (lambda x: F.stack([]), TypeError),
    # (found by calls with one argument broken, run on both engines)
    (lambda x: F.meshgrid(x, x, indexing=3), RuntimeError),
    (lambda x: F.eye((2, [1, 2])), RuntimeError),
    (lambda x: F.leaky_relu(x, negative_slope="x"), RuntimeError),
    (lambda x: F.nn.pad(x, ((1, 1),), constant_value=[1, 2, 3]), RuntimeError),
    (lambda x: F.full_like(x, None), RuntimeError),  # (filled with NaN before)
    (lambda x: F.roll(x, 1, axis=1.5), AssertionError),
    (lambda x: F.vision.correlation(x.reshape(1, 1, 2, 3), x.reshape(1, 1, 2, 3),
                                    max_displacement=-1), RuntimeError),
    (lambda x: x.transpose("x"), RuntimeError), (lambda x: F.eye(()), RuntimeError),
    (lambda x: F.nn.layer_norm(x, "x"), RuntimeError),  # (int("x")'s ValueError before)
    (lambda x: F.nn.general_norm(x, 1.5), RuntimeError),
    (lambda x: F.nn.general_norm(x, [0, 1, 2]), AssertionError),
    (lambda x: F.vision.interpolate(x.reshape(1, 1, 2, 3), scale_factor="x"), AssertionError),
    (lambda x: F.transpose(x, 1.5), RuntimeError),  # ("'float' object is not iterable" before)
    (lambda x: F.nn.general_norm(x, ()), AssertionError),
    (lambda x: F.broadcast_to(x, (-1, 3)), RuntimeError),
    (lambda x: F.vision.cvt_color(x.reshape(1, 1, 2, 3), mode=-1), TypeError),
])
def test_bad_arguments_raise_upstreams_error_types_too(call, upstream):
    # upstream 1.13 measured: its C++ ops raise RuntimeError, its Python functions assert
    # (earlier versions of this fork raised the last 24 as a plain ValueError or TypeError)
    with pytest.raises(upstream):
        call(mge.tensor(np.ones((2, 3), np.float32)))


# ----- empty tensors -----

def test_empty_tensor_reductions_and_indexing():
    e = F.zeros((0, 3))
    assert e.sum().item() == 0 and F.prod(e).item() == 1
    np.testing.assert_array_equal(F.sum(e, axis=0).numpy(), np.zeros(3))
    assert F.sum(e, axis=1).shape == (0,)
    assert np.isnan(F.mean(F.zeros((0,))).item())
    with pytest.raises(ValueError, match="empty"):
        F.max(e)
    with pytest.raises(ValueError, match="empty"):
        F.argmin(e)
    assert e[:0].shape == (0, 3) and e[mge.tensor([], dtype="int32")].shape == (0, 3)
    x = mge.tensor(rand(4, 3))
    assert x[mge.tensor([], dtype="int32")].shape == (0, 3)
    assert x[x > 100].shape == (0,)
    gm = GradManager().attach([x])
    with gm:
        gm.backward(x[2:2].sum())
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((4, 3)))


# ----- second order: these ops' gradients differentiated again (gradient penalties, MAML) -----

@pytest.mark.parametrize("mode,torch_mode", [("constant", "constant"), ("reflect", "reflect"),
                                             ("edge", "replicate")])
def test_pad_second_order(mode, torch_mode):
    x, r = rand(2, 3, 4, 5), rand(2, 3, 6, 9)
    check_second_order(
        lambda a: (F.nn.pad(a * a, ((0, 0), (0, 0), (1, 1), (2, 2)), mode=mode) ** 2 * r).sum(),
        lambda a: (torch.nn.functional.pad(a * a, (2, 2, 1, 1), mode=torch_mode) ** 2
                   * torch.tensor(r)).sum(), x)


def test_roll_and_gather_second_order():
    x, r = rand(3, 4), rand(3, 4)
    check_second_order(lambda a: (F.roll(a * a, (1, -2), (0, 1)) ** 2 * r).sum(),
                       lambda a: (torch.roll(a * a, (1, -2), (0, 1)) ** 2
                                  * torch.tensor(r)).sum(), x)
    index = np.array([[0, 2, 2, 1], [3, 3, 0, 1]], np.int32)  # repeats: gradients add up
    rg = rand(2, 4)
    check_second_order(
        lambda a: (F.gather(a * a, 1, mge.tensor(index[:, :2])) ** 3 * rg[:, :2]).sum()
        + (F.gather(a, 0, mge.tensor(index[:, :4] % 3)) ** 2 * rg).sum(),
        lambda a: (torch.gather(a * a, 1, torch.tensor(index[:, :2]).long()) ** 3
                   * torch.tensor(rg[:, :2])).sum()
        + (torch.gather(a, 0, torch.tensor(index[:, :4] % 3).long()) ** 2
           * torch.tensor(rg)).sum(), x)


def test_expand_dims_repeated_axes_insert_one_after_another_as_upstream():
    # upstream sorts the axes and inserts each in turn (its AddAxis), so repeats are allowed
    x = mge.tensor(np.array([1.0, 2.0], "float32"))
    assert F.expand_dims(x, [0, 0]).shape == (1, 1, 2)
    assert F.expand_dims(x, [1, 1]).shape == (2, 1, 1)
    assert F.expand_dims(x, [-1, 0]).shape == (1, 2, 1)  # negatives count in the result
    np.testing.assert_array_equal(F.squeeze(F.expand_dims(x, [0, 0]), 0).numpy(), [[1.0, 2.0]])
    with pytest.raises(ValueError, match="could not be empty"):
        F.expand_dims(x, [])


def test_reshape_takes_a_float_shape_tensor_of_whole_numbers():
    # upstream reads a computed float shape (a matmul's result, its test_interpreter) as ints
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    shape = F.matmul(mge.tensor([1.0, 1.0]), mge.tensor([[2.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_array_equal(F.reshape(mge.tensor(x), shape).numpy(), x.reshape(2, 2))
    with pytest.raises(TypeError, match="whole-number floats"):
        F.reshape(mge.tensor(x), mge.tensor([2.5, 1.6]))


# a 0-d integer Tensor or numpy array is the axis it holds, as upstream 1.13 reads it
# (measured: softmax, expand_dims, cumsum, concat, stack, split, roll and gather); numpy and
# torch are the oracles
@pytest.mark.parametrize("axis", [mge.tensor(1), mge.tensor(1, "int64"), np.array(1),
                                  np.int64(1)], ids=repr)
def test_a_0d_integer_tensor_or_array_is_the_axis_it_holds(axis):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = mge.tensor(x)
    np.testing.assert_array_equal(F.concat([t, t], axis).numpy(), np.concatenate([x, x], 1))
    np.testing.assert_array_equal(F.stack([t, t], axis).numpy(), np.stack([x, x], 1))
    np.testing.assert_array_equal(F.split(t, 3, axis)[2].numpy(), np.split(x, 3, 1)[2])
    np.testing.assert_array_equal(F.roll(t, 1, axis).numpy(), np.roll(x, 1, 1))
    np.testing.assert_array_equal(F.cumsum(t, axis).numpy(), np.cumsum(x, 1))
    np.testing.assert_array_equal(F.flip(t, axis).numpy(), np.flip(x, 1))
    assert F.expand_dims(t, axis).shape == np.expand_dims(x, 1).shape
    index = np.array([[2, 0, 1], [1, 1, 0]], np.int32)
    np.testing.assert_array_equal(F.gather(t, axis, mge.tensor(index)).numpy(),
                                  np.take_along_axis(x, index, 1))
    np.testing.assert_allclose(F.softmax(t, axis).numpy(),
                               torch.softmax(torch.tensor(x), 1).numpy(), rtol=1e-6)


@pytest.mark.parametrize("perm", [mge.tensor([1, 0, 2]), np.array([1, 0, 2]),
                                  mge.tensor([1, 0, 2], "int64")], ids=repr)
def test_a_permutation_may_be_an_integer_tensor_or_array(perm):
    # as upstream 1.13's x.transpose(Tensor([1, 0])) (measured); numpy's transpose the oracle
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    want = np.transpose(x, (1, 0, 2))
    np.testing.assert_array_equal(mge.tensor(x).transpose(perm).numpy(), want)
    np.testing.assert_array_equal(F.transpose(mge.tensor(x), perm).numpy(), want)
    bad = mge.tensor([1.0, 0.0, 2.0])
    with pytest.raises(TypeError, match="transpose: axes must be ints.*float32"):
        mge.tensor(x).transpose(bad)
    with pytest.raises(TypeError, match="transpose: pattern must be ints.*float32"):
        F.transpose(mge.tensor(x), bad)


def test_a_float_or_bool_axis_says_it_must_be_an_int():
    # an axis of 1.0 or True is refused (upstream 1.13 takes both in some functions by int())
    t = mge.tensor(np.ones((2, 3), np.float32))
    for axis in (1.0, True, mge.tensor(1.0), np.array([1, 0])):
        for cls in (TypeError, RuntimeError):  # (RuntimeError: upstream's pybind cast error)
            with pytest.raises(cls, match="concat: axis must be an int"):
                F.concat([t, t], axis)
    for axis in (1.0, mge.tensor(1.0), None):
        with pytest.raises(RuntimeError, match="expand_dims: axis must be an int"):
            F.expand_dims(t, axis)


def test_a_0d_numpy_array_is_a_shape_entry():
    # upstream's test_reshape passes (Tensor(1), -1, np.array(3, dtype="int64")); numpy's own
    # reshape, the oracle, takes 0-d integer arrays as sizes too
    x = np.arange(6, dtype=np.float32)
    for shape in [(mge.tensor(1), -1, np.array(3, dtype="int64")),
                  (np.array(2, dtype="int32"), np.array(-1))]:
        expected = x.reshape(tuple(int(s) for s in shape))
        np.testing.assert_array_equal(F.reshape(mge.tensor(x), shape).numpy(), expected)
    assert F.broadcast_to(mge.tensor(x), (np.array(2), 6)).shape == (2, 6)
    assert F.zeros((np.array(2, dtype="uint8"), 3)).shape == (2, 3)
    with pytest.raises(TypeError, match="shape entries must be ints"):
        F.reshape(mge.tensor(x), (np.array(2.5), 3))


# a whole float is the size it holds, as upstream's shape conversion reads it (measured with
# upstream 1.13: F.zeros((2.0, 3)), F.reshape(x, (3.0, 2)), F.ones(np.array([2.0, 3.0])),
# F.tile(x, (2.0, 1)) and F.eye(2.0) give the int sizes); numpy's reshape of the ints is the oracle
@pytest.mark.parametrize("make", [
    lambda s: F.zeros(s).shape, lambda s: F.ones(s, dtype="int32").shape,
    lambda s: F.full(s, 1.5).shape, lambda s: F.eye(s).shape,
    lambda s: F.broadcast_to(mge.tensor([1.0, 2.0, 3.0]), s).shape,
    lambda s: F.reshape(F.arange(6.0), s).shape, lambda s: F.arange(6.0).reshape(s).shape,
], ids=["zeros", "ones", "full", "eye", "broadcast_to", "reshape", "Tensor.reshape"])
@pytest.mark.parametrize("shape", [(2.0, 3), (np.float32(2), 3), (np.array(2.0), 3.0),
                                   np.array([2.0, 3.0])], ids=str)
def test_a_whole_float_is_the_size_it_holds(make, shape):
    assert make(shape) == np.empty((2, 3)).shape


@pytest.mark.parametrize("make", [
    lambda s: F.zeros(s), lambda s: F.full(s, 1.5), lambda s: F.eye(s),
    lambda s: F.broadcast_to(mge.tensor([1.0, 2.0, 3.0]), s), lambda s: F.tile(F.ones(3), s),
    lambda s: F.reshape(F.arange(6.0), s), lambda s: F.arange(6.0).reshape(s),
], ids=["zeros", "full", "eye", "broadcast_to", "tile", "reshape", "Tensor.reshape"])
@pytest.mark.parametrize("shape", [(2.5, 3), ("2", 3), np.array([2.5, 3.0])], ids=str)
def test_a_size_with_a_fraction_or_a_string_says_so(make, shape):
    # int() would truncate 2.5 to 2 (upstream 1.13 does) and parse "2"
    with pytest.raises(TypeError, match="(ints|integers).*(whole|got)"):
        make(shape)


def test_a_whole_number_float_tensor_is_a_size():
    # as upstream 1.13's F.zeros((Tensor(3.0), 2)) and F.eye(Tensor(3.0), Tensor(3.0)) (measured)
    assert F.zeros((mge.tensor(3.0), 2)).shape == (3, 2)
    np.testing.assert_array_equal(F.eye(mge.tensor(3.0), mge.tensor(3.0)).numpy(), np.eye(3))
    np.testing.assert_array_equal(F.eye(2, mge.tensor(3.0)).numpy(), np.eye(2, 3))
    with pytest.raises(TypeError, match=r"zeros: shape entries must be ints.*got 2.5"):
        F.zeros((mge.tensor(2.5), 2))


def test_tile_takes_whole_float_reps():
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(F.tile(mge.tensor(x), (2.0, np.float32(1))).numpy(),
                                  np.tile(x, (2, 1)))
    assert F.zeros(2.0).shape == F.eye(2.0).shape[:1] == (2,)


def test_shape_mismatches_are_both_value_and_runtime_errors():
    # numpy code catches ValueError, upstream's programs RuntimeError (its C++ shape check)
    a = mge.tensor(np.ones((3, 2), np.float32))
    for call in (lambda: F.reshape(a, (2, 2)), lambda: F.matmul(a, a)):
        for error in (ValueError, RuntimeError):
            with pytest.raises(error):
                call()
    with pytest.raises(ValueError):
        np.ones((3, 2)).reshape(2, 2)  # the oracle: numpy says ValueError for the same call


class _TorchStyle(mge.Tensor):
    """A user's subclass with torch's method signatures, as MegEngine/invis defines them."""

    def transpose(self, dim0, dim1):
        pattern = list(range(self.ndim))
        pattern[dim0], pattern[dim1] = pattern[dim1], pattern[dim0]
        return mge.Tensor.transpose(self, pattern)

    def reshape(self, *shape):
        return mge.Tensor.reshape(self, *shape)

    def flatten(self, start_dim=0, end_dim=-1):
        return mge.Tensor.flatten(self, start_dim, end_dim)


def test_shape_functions_use_the_engine_methods_not_a_subclass_override():
    a = rand(2, 8, 3, 4)
    x = _TorchStyle(a)
    np.testing.assert_array_equal(F.transpose(x, (0, 2, 3, 1)).numpy(), a.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(F.transpose(x[:, :1], (0, 2, 3)).numpy(), a[:, 0])
    np.testing.assert_array_equal(F.reshape(x, (4, -1)).numpy(), a.reshape(4, -1))
    np.testing.assert_array_equal(F.flatten(x, 1).numpy(), a.reshape(2, -1))
    torch_out = torch.nn.functional.pixel_shuffle(torch.tensor(a), 2).numpy()
    np.testing.assert_array_equal(F.pixel_shuffle(x, 2).numpy(), torch_out)


@pytest.mark.parametrize("shape, axis", [((50000,), 0), ((50000, 2), 0), ((2, 50000), 1)])
def test_cumsum_of_float16_adds_in_float32(shape, axis):
    # a float16 running sum of values in [0, 1) stopped growing at 2048 (torch: 25072 of 50,000
    # values, exact 25071.9); the gradient is a reversed scan
    x = np.random.RandomState(0).rand(*shape)
    check_float16_against_torch(lambda t: F.cumsum(t, axis), lambda t: t.cumsum(axis), x)


def test_cumsum_of_bools_counts_in_int32():
    # the running count, as F.sum of bools (int32) and torch's cumsum (int64); earlier versions
    # of this fork gave bools (whether any was True so far)
    x = np.random.RandomState(1).rand(3, 40) < 0.6
    got = F.cumsum(mge.tensor(x), 1)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got.numpy(), torch.tensor(x).cumsum(1).numpy())


def test_split_and_meshgrid_return_tuples():
    # upstream 1.13 measured: F.split and F.meshgrid return tuples (earlier versions of this
    # fork returned lists)
    parts = F.split(mge.tensor([1, 2, 3, 4, 5]), [1, 3])
    assert type(parts) is tuple and [p.numpy().tolist() for p in parts] == [[1], [2, 3], [4, 5]]
    assert type(F.split(mge.tensor([1, 2, 3, 4]), 2)) is tuple
    grids = F.meshgrid(mge.tensor([1, 2, 3]), mge.tensor([4, 5]))
    assert type(grids) is tuple
    assert [g.numpy().tolist() for g in grids] == [[[1, 2, 3], [1, 2, 3]], [[4, 4, 4], [5, 5, 5]]]


def test_flatten_refuses_an_axis_out_of_range():
    # flatten(x, 0, 4) of a 4-d x returned x unflattened (the axis wrapped around to 0)
    x = mge.tensor(np.zeros((2, 3, 4, 5), "float32"))
    for start, end in [(0, 4), (4, -1), (-5, 2)]:
        with pytest.raises(ValueError, match="flatten: axis -?[45] is out of range for 4 dims"):
            F.flatten(x, start, end)
        with pytest.raises(ValueError, match="flatten: axis -?[45] is out of range for 4 dims"):
            x.flatten(start, end)  # the method too
    assert F.flatten(x, -3, -2).shape == (2, 12, 5) == x.flatten(-3, -2).shape
    assert F.flatten(mge.tensor(3.0)).shape == (1,)


def test_flatten_of_axes_out_of_order_names_flatten_and_its_axes():
    # reshape, which flatten computes with, named itself and a shape the user never gave
    x = mge.tensor(np.zeros((1, 1, 3, 2), "float32"))
    match = (r"^flatten: end_axis {} \(axis 1\) comes 2 axes before start_axis 3 \(axis 3\) of "
             r"a tensor of shape \(1, 1, 3, 2\)")
    with pytest.raises(ValueError, match=match.format(-3)):
        F.flatten(x, 3, -3)
    with pytest.raises(ValueError, match=match.format(1)):
        x.flatten(3, 1)  # the method too


def test_stack_of_0d_tensors_counts_each_as_shape_1():
    # upstream 1.13 measured: F.stack of three 0-d tensors is (3, 1), (1, 3) with axis=-1, and
    # [0-d, (1,)] stacks to (2, 1); a 0-d input's gradient is 0-d
    s = [mge.tensor(1.0), mge.tensor(2.0), mge.Parameter(3.0)]
    assert F.stack(s).numpy().tolist() == [[1.0], [2.0], [3.0]]
    assert F.stack(s, axis=-1).shape == (1, 3) and F.stack(s, axis=1).shape == (1, 3)
    assert F.stack([mge.tensor(1.0), mge.tensor([2.0])]).shape == (2, 1)
    with pytest.raises(ValueError, match="out of range"):
        F.stack(s, axis=2)
    gm = GradManager().attach(s[2])
    with gm:
        gm.backward((F.stack(s) * mge.tensor([[1.0], [2.0], [5.0]])).sum())
    assert s[2].grad.shape == () and s[2].grad.item() == 5.0


def test_pad_of_an_unknown_mode_is_a_valueerror_and_upstreams_assertionerror():
    x = mge.tensor(np.zeros((2, 3), np.float32))
    for error in (ValueError, AssertionError):  # upstream asserts the mode
        with pytest.raises(error, match="mode must be one of"):
            F.nn.pad(x, ((1, 1), (0, 0)), mode="wrap")


@pytest.mark.parametrize("call, upstream, match", [
    pytest.param(lambda x: F.concat([x, F.ones((3, 5))]),
                 RuntimeError, r"shapes \[\(3, 4\), \(3, 5\)\] differ outside axis 0", id="concat"),
    pytest.param(lambda x: F.stack([x, F.ones((3, 5))]),
                 RuntimeError, "tensors must have one shape", id="stack"),
    pytest.param(lambda x: F.squeeze(x, 0),
                 RuntimeError, r"axis 0 of shape \(3, 4\) has size 3, not 1", id="squeeze"),
    pytest.param(lambda x: F.transpose(x, (0, 0)),
                 RuntimeError, r"axes \(0, 0\) are not a permutation", id="transpose"),
    pytest.param(lambda x: F.tile(x, (-1, 2)),
                 RuntimeError, r"reps must be >= 0, got \(-1, 2\)", id="tile"),
    pytest.param(lambda x: F.repeat(x, -1),
                 AssertionError, "repeats must be >= 1, got -1", id="repeat"),
    pytest.param(lambda x: F.diag(F.expand_dims(x, 0)),
                 RuntimeError, "input must be 1-D or 2-D", id="diag"),
])
def test_bad_arguments_raise_what_upstream_raises(call, upstream, match):
    # upstream 1.13 measured: RuntimeError from its C++ shape checks, AssertionError from
    # repeat's Python assert; earlier versions of this fork raised a plain ValueError.
    # The error is also a ValueError (what the mistake is) and says what was wrong
    raises_as_upstream(call, (3, 4), upstream, match)


def test_transpose_of_a_pattern_holding_a_string_names_the_function():
    # numpy's "'str' object cannot be interpreted as an integer" came out here before
    with pytest.raises(TypeError, match="transpose: axis must be an int, got str"):
        F.transpose(mge.tensor(np.zeros((2, 3), np.float32)), ("1", 0))


@pytest.mark.parametrize("call, match", [
    (lambda x: F.diag(x, k=[1, 1]), r"diag: k must be an int, got \[1, 1\]"),
    (lambda x: F.repeat(x, "x"), "repeat: repeats must be an int, got 'x'"),
    (lambda x: F.repeat(x, None), "repeat: repeats must be an int, got None"),
])
def test_an_int_argument_of_another_type_names_the_function_and_argument(call, match):
    # upstream 1.13 measured: diag RuntimeError ("Unable to cast"), repeat TypeError; int()'s
    # "int() argument must be ... not 'list'" came out here before, naming neither
    x = mge.tensor(np.zeros((2, 3), np.float32))
    for error in (TypeError, RuntimeError):
        with pytest.raises(error, match=match):
            call(x)


@pytest.mark.parametrize("call, match", [
    (lambda x: F.expand_dims(x, 0.5),
     "expand_dims: axis must be an int or a sequence of ints, got 0.5"),
    (lambda x: F.split(x, 1.5),
     r"split: nsplits_or_sections must be an int \(a number of parts\) or a sequence"),
    (lambda x: F.split(x, [1, "a"], axis=1), "split: nsplits_or_sections must be an int, got 'a'"),
])
def test_axis_and_sections_of_another_type_name_the_function(call, match):
    # list()'s "'float' object is not iterable" came out here before, naming no function
    with pytest.raises(TypeError, match=match):
        call(mge.tensor(np.zeros((2, 3), np.float32)))


@pytest.mark.parametrize("join", [F.concat, F.stack])
def test_joining_a_none_names_the_item(join):
    # upstream 1.13 measured: TypeError ("py_apply expects tensor as inputs"); before, None
    # became an empty float32 tensor and concat([int32 (3,), None]) gave a float32 (3,)
    a = mge.tensor([1, 2, 3], dtype="int32")
    with pytest.raises(TypeError, match=f"{join.__name__}: item 1 of the tensors to join is None"):
        join([a, None])
    assert join([a, [4, 5, 6]]).dtype == np.int32  # (numbers still join)


@pytest.mark.parametrize("k", [0.5, "1"])
def test_diag_of_a_fractional_or_string_offset_raises(k):
    # int() truncated 0.5 to the main diagonal and parsed "1"; upstream 1.13 refuses both
    with pytest.raises(TypeError, match="^diag: k must be an int"):
        F.diag(mge.tensor([1.0, 2.0]), k=k)


def test_roll_of_a_string_shift_raises():
    # int() parsed "1"; upstream 1.13 refuses it
    with pytest.raises(TypeError, match="^roll: shift must be an int, got '1'"):
        F.roll(mge.tensor([[1.0, 2.0]]), ("1",), (1,))
