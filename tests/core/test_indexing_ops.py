"""Tests of megengine/core/_imperative_rt/indexing_ops.py: upstream's indexing descriptors
(get, set and incr variants) against torch (values and gradients), their index inputs kept as
data by a dumped program, and second-order gradients through them."""
import io

import numpy as np
import pytest
import torch

import megengine as mge
from megengine.core._imperative_rt.core2 import apply
from megengine.core.ops import builtin
from megengine.jit import trace
from megengine.utils.comp_graph_tools import GraphInference
from megengine.utils.network import Network
from oracle import check_against_torch, check_second_order_against_torch

rng = np.random.RandomState(0)
s = mge.tensor
VEC0 = ((0, False, False, False, True),)
SLICE0_VEC1 = ((0, True, True, True, False), (1, False, False, False, True))


def one(op, *xs):
    (out,) = apply(op, *xs)
    return out


def test_set_and_incr_subtensor_match_torch_with_gradients():
    x, v = rng.randn(5, 5).astype("float32"), rng.randn(2).astype("float32")
    bounds = (s(0), s(4), s(2), s(3))  # x[0:4:2, 3]

    def torch_set(a, b):
        out = a.clone()
        out[0:4:2, 3] = b
        return out

    check_against_torch(lambda a, b: one(builtin.SetSubtensor(SLICE0_VEC1), a, b, *bounds),
                        torch_set, x, v)
    check_against_torch(lambda a, b: one(builtin.IncrSubtensor(SLICE0_VEC1), a, b, *bounds),
                        lambda a, b: a + torch.zeros_like(a).index_put(
                            (torch.tensor([0, 2]), torch.tensor([3, 3])), b), x, v)


@pytest.mark.parametrize("accumulate", [False, True])
def test_set_and_incr_multi_axis_vec_match_torch_index_put(accumulate):
    x, v = rng.randn(5, 4).astype("float32"), rng.randn(3, 4).astype("float32")
    idx = np.array([0, 4, 2], "int32") if not accumulate else np.array([1, 3, 1], "int32")
    op = builtin.IndexingIncrMultiAxisVec if accumulate else builtin.IndexingSetMultiAxisVec
    # incr with a repeated index adds twice (upstream's scatter-add), as accumulate=True does
    check_against_torch(lambda a, b: one(op(VEC0), a, b, s(idx)),
                        lambda a, b: a.index_put((torch.tensor(idx).long(),), b,
                                                 accumulate=accumulate), x, v)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int64", "bool"])
def test_incr_of_small_and_wide_integers_wraps_as_numpy_add_at(dtype):
    # CUDA's atomic add has no 8/16-bit, int64 or bool form: the GPU path widens (gpu-check
    # runs this on gpu0); every device must give numpy's add.at, repeated indices included
    x = (np.arange(12).reshape(4, 3) * 37 % 7).astype(dtype)
    v = np.array([[120, 5, 1]] * 3).astype(dtype)
    idx = np.array([1, 3, 1], "int32")
    got = one(builtin.IndexingIncrMultiAxisVec(VEC0), mge.tensor(x, dtype=dtype),
              mge.tensor(v, dtype=dtype), s(idx))
    want = x.copy()
    np.add.at(want, idx, v)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got.numpy(), want)


def test_value_broadcasts_and_its_gradient_is_summed_back():
    x, v = rng.randn(5, 4).astype("float32"), rng.randn(1, 4).astype("float32")
    idx = np.array([1, 3, 1], "int32")
    check_against_torch(
        lambda a, b: one(builtin.IndexingIncrMultiAxisVec(VEC0), a, b, s(idx)),
        lambda a, b: a.index_put((torch.tensor(idx).long(),), b.expand(3, 4), accumulate=True),
        x, v)
    with pytest.raises(ValueError, match="does not broadcast"):
        one(builtin.IndexingSetMultiAxisVec(VEC0), s(x), s(np.ones((2, 4), "float32")), s(idx))


def test_mesh_set_and_incr_write_every_combination():
    x = rng.randn(4, 5, 6).astype("float32")
    i1, i2 = np.array([4, 0, 2], "int32"), np.array([1, 5], "int32")
    v = rng.randn(4, 3, 2).astype("float32")
    items = ((1, False, False, False, True), (2, False, False, False, True))
    mesh = (slice(None), torch.tensor(i1).long()[:, None], torch.tensor(i2).long()[None, :])

    def torch_set(a, b):
        out = a.clone()
        out[mesh] = b
        return out

    check_against_torch(lambda a, b: one(builtin.SetMeshIndexing(items), a, b, s(i1), s(i2)),
                        torch_set, x, v)
    check_against_torch(lambda a, b: one(builtin.IncrMeshIndexing(items), a, b, s(i1), s(i2)),
                        lambda a, b: torch_set(a, a[mesh] + b), x, v)


def test_batched_mesh_set_and_incr_index_each_batch_entry():
    x = rng.randn(2, 3, 4).astype("float32")
    v = rng.randn(2, 2, 3).astype("float32")
    i1, i2 = np.array([[0, 2], [0, 2]], "int32"), np.array([[0, 1, 2], [1, 2, 3]], "int32")
    items = ((1, False, False, False, True), (2, False, False, False, True))
    expect_set, expect_inc = x.copy(), x.copy()
    for b in range(2):
        expect_set[b][np.ix_(i1[b], i2[b])] = v[b]
        expect_inc[b][np.ix_(i1[b], i2[b])] += v[b]
    got = one(builtin.BatchedMeshIndexing(items), s(x), s(i1), s(i2))
    np.testing.assert_array_equal(got.numpy(), np.stack([x[b][np.ix_(i1[b], i2[b])]
                                                         for b in range(2)]))
    got = one(builtin.BatchedSetMeshIndexing(items), s(x), s(v), s(i1), s(i2))
    np.testing.assert_array_equal(got.numpy(), expect_set)
    got = one(builtin.BatchedIncrMeshIndexing(items), s(x), s(v), s(i1), s(i2))
    np.testing.assert_allclose(got.numpy(), expect_inc, rtol=1e-6)

    def torch_inc(a, b):
        rows = torch.arange(2)[:, None, None]
        idx = (rows, torch.tensor(i1).long()[:, :, None], torch.tensor(i2).long()[:, None, :])
        return a.index_put(idx, b, accumulate=True)

    check_against_torch(
        lambda a, b: one(builtin.BatchedIncrMeshIndexing(items), a, b, s(i1), s(i2)),
        torch_inc, x, v)


def test_a_dumped_program_takes_the_index_from_its_inputs():
    items = SLICE0_VEC1
    x = rng.rand(5, 5).astype("float32")

    @trace(symbolic=True, capture_as_const=True)
    def f(a, b, e, st, i):
        return one(builtin.Subtensor(items), a, b, e, st, i)

    f(s(x), s(0), s(4), s(2), s(3))
    file = io.BytesIO()
    f.dump(file, arg_names=["x", "b", "e", "st", "i"], output_names=["y"])
    file.seek(0)
    feeds = {"x": x, "b": np.array(1, "int32"), "e": np.array(5, "int32"),
             "st": np.array(3, "int32"), "i": np.array(0, "int32")}
    np.testing.assert_array_equal(GraphInference(file).run(inp_dict=feeds)["y"], x[1:5:3, 0])
    file.seek(0)  # the graph layer shows upstream's operator type
    assert [o.type for o in Network.load(file).all_oprs].count("Subtensor") == 1


def test_second_order_gradients_through_get_set_and_incr_match_torch():
    x, v = rng.randn(4, 3).astype("float32"), rng.randn(2, 3).astype("float32")
    idx = np.array([2, 0], "int32")
    ti = torch.tensor(idx).long()

    def loss(a, b):
        y = one(builtin.IndexingSetMultiAxisVec(VEC0), a, b * b, s(idx))
        z = one(builtin.IndexingIncrMultiAxisVec(VEC0), y, b, s(idx))
        return (one(builtin.IndexingMultiAxisVec(VEC0), z * z * z, s(idx)) * a[:2]).sum()

    def torch_loss(a, b):
        z = a.index_put((ti,), b * b).index_put((ti,), b, accumulate=True)
        return ((z * z * z)[ti] * a[:2]).sum()

    check_second_order_against_torch(loss, torch_loss, x, v)


def test_bad_index_inputs_say_what_is_wrong():
    x = s(np.zeros((3, 3), "float32"))
    with pytest.raises(TypeError, match="take 1 index inputs, got 2"):
        one(builtin.IndexingMultiAxisVec(VEC0), x, s([0]), s([1]))
    with pytest.raises(TypeError, match="must be integers"):
        one(builtin.IndexingMultiAxisVec(VEC0), x, s([0.5]))
    with pytest.raises(ValueError, match="axis 0 is the batch"):
        one(builtin.BatchedMeshIndexing(VEC0), x, s([[0], [1], [2]]))
    with pytest.raises(TypeError, match="give x, the value"):
        one(builtin.SetSubtensor(VEC0), x)


@pytest.mark.parametrize("symbolic", [False, True])
def test_a_traced_function_follows_new_index_values_on_every_call(symbolic):
    x, v = rng.randn(5, 3).astype("float32"), rng.randn(2, 3).astype("float32")

    @trace(symbolic=symbolic)
    def f(a, b, i):
        return one(builtin.IndexingIncrMultiAxisVec(VEC0), a, b, i)

    for idx in ([0, 4], [2, 2], [1, 3]):  # the index is data: no new trace, no stale value
        expect = x.copy()
        np.add.at(expect, np.array(idx), v)
        np.testing.assert_allclose(f(s(x), s(v), s(np.array(idx, "int32"))).numpy(), expect,
                                   rtol=1e-6)
