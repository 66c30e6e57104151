"""Multi-tensor optimizer steps (`Optimizer._update_batch`): SGD's, Adam's and AdamW's CUDA update of many parameters in one kernel (ATen's ``_fused_sgd_`` / ``_fused_adam_`` / ``_fused_adamw_``) against torch's optimizers, and the torch views kept between steps (`optimizer.TorchViews`).

On a GPU (or the simulated one: ``make sim-gpu-check``, and tests/test_simulated_gpu_paths.py in
every run) the side-by-side tests of test_sgd.py take this path by themselves. Here it is also
forced for numpy parameters (ATen's CPU kernel of the same op), so the CPU-only suite checks
the batching and the formulas directly.
"""
import numpy as np
import pytest
import torch

import megengine as mge
from megengine.core.dispatch import KERNEL_FLOATS
from megengine.optimizer import LAMB, SGD, Adam, AdamW, LAMBFp16
from megengine.optimizer import optimizer as optimizer_module
from megengine.optimizer.optimizer import TorchViews

from devices import address, requires_cuda, simulated_gpu_runtime

SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02),
]


@pytest.fixture
def batched_on_cpu(monkeypatch):
    """Numpy float32/float64 C-contiguous parameters join `_update_batch`, as CuPy ones do on a
    GPU; returns the list of batch sizes each call (of SGD, Adam, AdamW or LAMB) updated."""
    calls = []

    def batchable(data, grad):
        return (data.dtype in KERNEL_FLOATS and grad.dtype == data.dtype
                and data.flags.c_contiguous and grad.flags.c_contiguous)

    def spy(real):
        def batch(self, items, group):
            calls.append(len(items))
            return real(self, items, group)
        return batch

    monkeypatch.setattr(optimizer_module, "_batchable", batchable)
    for cls in (SGD, Adam, LAMB):  # (AdamW inherits Adam's)
        monkeypatch.setattr(cls, "_update_batch", spy(cls.__dict__["_update_batch"]))
    return calls


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_batch_matches_torch(side_by_side_on_cpu, batched_on_cpu, kw):
    side_by_side_on_cpu(lambda ps: SGD(ps, **kw), lambda ps: torch.optim.SGD(ps, **kw), steps=4)
    assert batched_on_cpu == [3] * 4  # the three parameters in one call each step


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_batch_matches_the_per_parameter_update(batched_on_cpu, monkeypatch, kw):
    """The batch and `_update` (the numpy code, which the fused per-parameter CUDA kernel is
    checked against) agree to rounding on float64, momentum buffers included, and a gradient
    that is not C-contiguous, or a parameter of another dtype, takes `_update` beside the batch."""
    rng = np.random.RandomState(0)
    shapes = [(4, 5), (7,), (), (3, 3)]
    init = [np.asarray(rng.randn(*s)) for s in shapes]
    results = []
    for batched in (True, False):
        if not batched:
            monkeypatch.setattr(optimizer_module, "_batchable", lambda data, grad: False)
        params = [mge.Parameter(v, dtype="float64") for v in init[:3]]
        params.append(mge.Parameter(init[3], dtype="float32"))  # a dtype of its own
        opt = SGD(params, **kw)
        grads = np.random.RandomState(1)
        for _ in range(3):
            for p, s in zip(params, shapes):
                g = np.asarray(grads.randn(*s), dtype=p.dtype)
                # (4, 5): a transposed gradient, not C-contiguous
                p.grad = mge.Tensor(np.ascontiguousarray(g.T), dtype=g.dtype).T if s == (4, 5) \
                    else mge.Tensor(g, dtype=g.dtype)
            opt.step()
        state = [opt._state[p].get("momentum_buffer") for p in params]
        results.append(([p.numpy() for p in params],
                        [None if b is None else b.numpy() for b in state]))
    assert batched_on_cpu == [2, 1] * 3  # float64 (7,) and (): one call; float32: another
    (batch_values, batch_bufs), (plain_values, plain_bufs) = results
    for a, b in zip(batch_values + batch_bufs, plain_values + plain_bufs):
        if a is None:
            assert b is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12 if a.dtype == np.float64 else 1e-6,
                                       atol=1e-14)


@requires_cuda
def test_sgd_batch_keeps_views_of_parameters_and_buffers(monkeypatch):
    """On a GPU: one call a step, and the torch views of parameters and momentum buffers are
    made once and reused while each array stays the same; they do not count as aliases (no copy
    of a parameter per step), and a parameter given a new array gets a new view. A user's alias
    still keeps its old value."""
    made, calls = [], []
    real_view, real_batch = optimizer_module._aten.memory_view, SGD._update_batch

    def spy(a):
        made.append(a.shape)
        return real_view(a)

    def batch_spy(self, items, group):
        calls.append(len(items))
        return real_batch(self, items, group)

    monkeypatch.setattr(optimizer_module._aten, "memory_view", spy)
    monkeypatch.setattr(SGD, "_update_batch", batch_spy)
    w = mge.Parameter(np.ones((3, 2), "float32"), device="gpu0")
    b = mge.Parameter(np.zeros(2, "float32"), device="gpu0")
    opt = SGD([w, b], lr=0.5, momentum=0.9)
    addresses = (address(w), address(b))  # (holding the arrays would make them shared)

    def step():
        w.grad = mge.Tensor(np.ones((3, 2), "float32"), device="gpu0")
        b.grad = mge.Tensor(np.ones(2, "float32"), device="gpu0")
        opt.step()

    for _ in range(3):
        step()
    assert calls == [2] * 3
    assert made == [(3, 2), (2,), (3, 2), (2,)]  # two parameters and two buffers, once
    assert (address(w), address(b)) == addresses  # in place: never taken for shared
    # momentum 0.9 from zeros with gradient 1: v = 1, 1.9, 2.71; w = 1 - 0.5 * (1 + 1.9 + 2.71)
    np.testing.assert_allclose(w.numpy(), np.full((3, 2), 1 - 0.5 * 5.61), rtol=1e-6)
    alias = w.detach()  # a user's alias: upstream never changes its value
    kept = alias.numpy().copy()
    step()
    np.testing.assert_array_equal(alias.numpy(), kept)
    assert address(w) != addresses[0] and made[-1] == (3, 2)  # a new array, a new view
    np.testing.assert_allclose(w.numpy(), kept - 0.5 * 3.439, rtol=1e-6)  # v = 3.439


@requires_cuda
def test_torch_views_are_dropped_with_the_arrays_a_step_no_longer_asks_for():
    import copy
    import pickle

    from devices import host

    views = TorchViews()
    a = mge.Tensor(np.arange(3, dtype="float32"), device="gpu0")._data
    b = mge.Tensor(np.ones(4, "float64"), device="gpu0")._data
    va, vb = views(a), views(b)
    assert views(a) is va and va.data_ptr() == address(a)
    views.done()
    assert views(a) is va  # kept from the last step
    views.done()  # b was not asked for: its view goes
    assert views(b) is not vb and views(b).data_ptr() == vb.data_ptr()
    c = a.reshape(3, 1)  # the same memory as another shape: a view of its own
    assert views(c).shape == (3, 1)
    np.testing.assert_array_equal(host(a), [0, 1, 2])
    assert copy.deepcopy(views)(a) is not va and pickle.loads(pickle.dumps(views))(b) is not vb


def test_torch_views_of_numpy_arrays_are_made_each_time():
    views = TorchViews()  # (a view of numpy memory holds the array: kept, it would be an alias)
    a = np.zeros(3, "float32")
    assert views(a) is not views(a) and views(a).data_ptr() == a.ctypes.data


ADAM_CASES = [
    (Adam, torch.optim.Adam, dict(lr=0.01)),
    (Adam, torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    (AdamW, torch.optim.AdamW, dict(lr=0.01)),
    (AdamW, torch.optim.AdamW, dict(lr=0.02, betas=(0.85, 0.995), weight_decay=0.05)),
]


@pytest.mark.parametrize("ours,theirs,kw", ADAM_CASES)
def test_adam_batch_matches_torch(side_by_side_on_cpu, batched_on_cpu, ours, theirs, kw):
    side_by_side_on_cpu(lambda ps: ours(ps, **kw), lambda ps: theirs(ps, **kw), steps=4)
    assert batched_on_cpu == [3] * 4


@pytest.mark.parametrize("ours,theirs,kw", ADAM_CASES)
def test_adam_batch_matches_the_per_parameter_update(batched_on_cpu, monkeypatch, ours,
                                                     theirs, kw):
    """float64, against `_update` (the numpy code the per-parameter CUDA kernel is checked
    against): moments and steps agree to rounding; a parameter added to the group later (a
    step count of its own) is updated by `_update`, the others in one call."""
    rng = np.random.RandomState(0)
    init = [np.asarray(rng.randn(*s)) for s in ((4, 5), (6,), ())]
    results = []
    for batched in (True, False):
        if not batched:
            monkeypatch.setattr(optimizer_module, "_batchable", lambda data, grad: False)
        params = [mge.Parameter(v, dtype="float64") for v in init]
        opt = ours(params[:2], **kw)
        grads = np.random.RandomState(1)
        for step in range(4):
            if step == 2:
                opt.param_groups[0]["params"].append(params[2])
            for p in opt.param_groups[0]["params"]:
                p.grad = mge.Tensor(np.asarray(grads.randn(*p.shape)), dtype="float64")
            opt.step()
        results.append([p.numpy() for p in params]
                       + [opt._state[p][k].numpy() for p in params
                          for k in ("exp_avg", "exp_avg_sq")]
                       + [[opt._state[p]["step"] for p in params]])
    # steps 1-2: one call of two; steps 3-4: three, which the late parameter's count of its
    # own sends to `_update` one by one
    assert batched_on_cpu == [2, 2, 3, 3]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kw", [dict(lr=0.01, weight_decay=0.1), dict(lr=0.02, always_adapt=True),
                                dict(lr=0.01, weight_decay=0.05, bias_correction=False),
                                dict(lr=0.01)])
def test_lamb_batch_reads_the_trust_ratios_together_with_the_same_values(batched_on_cpu,
                                                                         monkeypatch, kw):
    """LAMB's batch (CUDA: one host read of all the sums of squares, where each parameter read
    its two) gives `_update`'s values bit for bit, the moments too; without a trust ratio
    (no decay, no always_adapt) it hands each parameter to `_update`."""
    rng = np.random.RandomState(0)
    init = [np.asarray(rng.randn(*s), dtype=np.float32) for s in ((4, 5), (6,), ())]
    init[2] = np.zeros((), np.float32)  # a zero parameter: ratio 1
    results, reads = [], []
    for batched in (True, False):
        if not batched:
            monkeypatch.setattr(optimizer_module, "_batchable", lambda data, grad: False)
        params = [mge.Parameter(v) for v in init]
        opt = LAMB(params, **kw)
        grads = np.random.RandomState(1)
        for _ in range(3):
            for p in params:
                p.grad = mge.Tensor(np.asarray(grads.randn(*p.shape), dtype=np.float32))
            opt.step()
        results.append([p.numpy() for p in params]
                       + [opt._state[p][k].numpy() for p in params
                          for k in ("exp_avg", "exp_avg_sq")])
    assert batched_on_cpu == [3] * 3
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_lamb_fp16_updates_each_parameter_through_its_master_copy(batched_on_cpu):
    p = mge.Parameter(np.ones(4, np.float32))  # (float32: it could have joined a batch)
    p.grad = mge.Tensor(np.full(4, 0.5, np.float32))
    opt = LAMBFp16([p], lr=0.1, weight_decay=0.1)
    opt.step()
    assert batched_on_cpu == [] and "param_fp32" in opt._state[p]


@pytest.mark.parametrize("make, dtype, kernels, syncs", [
    # the moments, direction and squares; their sums; the step: three a parameter, and the
    # group's sums stacked for one read (the array code launched ~22 a parameter)
    (lambda ps: LAMB(ps, lr=0.01, weight_decay=0.01), "float32", 3 * 8 + 1, 1),
    (lambda ps: LAMB(ps, lr=0.01, bias_correction=False), "float32", 8, 0),  # Adam's kernel
    # master copies: the cast of the gradient, the three, the copy back; a read each
    (lambda ps: LAMBFp16(ps, lr=0.01, weight_decay=0.01), "float16", 5 * 8, 8),
])
def test_lamb_on_a_gpu_launches_a_few_kernels_a_parameter(make, dtype, kernels, syncs):
    rt = simulated_gpu_runtime()
    rng = np.random.RandomState(0)
    params = [mge.Parameter(rng.randn(16, 8).astype(dtype), device="gpu0") for _ in range(8)]
    opt = make(params)
    for step in range(3):
        for p in params:
            p.grad = mge.Tensor(rng.randn(16, 8).astype(dtype), device="gpu0")
        before = rt.kernels, rt.syncs
        opt.step()
    assert (rt.kernels - before[0], rt.syncs - before[1]) == (kernels, syncs)
