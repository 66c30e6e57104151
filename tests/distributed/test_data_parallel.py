"""Data-parallel correctness (issue 13): N steps on 2 ranks with make_allreduce_cb("mean") equal one process on the concatenated batch, eagerly and traced."""

import numpy as np
import pytest

import megengine as mge
import megengine.distributed as dist
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.jit import trace

from devices import forked_torch_autograd_fails
from module_oracle import load_guide_example

STEPS = 3
PER_RANK = 4  # samples per rank per step
RANKS = 2


class SmallCNN(M.Module):
    """Two convolutions with SyncBatchNorm (a plain batch norm when not distributed)."""

    def __init__(self):
        super().__init__()
        self.conv1 = M.Conv2d(1, 4, 3)
        self.bn1 = M.SyncBatchNorm(4)
        self.conv2 = M.Conv2d(4, 8, 3, stride=2)
        self.bn2 = M.SyncBatchNorm(8)
        self.fc = M.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.reshape(x.shape[0], -1))


def _guide_lenet():
    """The guide's hybrid LeNet (torch extractor inside PyTorchModule + megengine classifier)."""
    module = load_guide_example()
    return module.LeNet(module.LeNet_Extract())


def _build(kind):
    return SmallCNN() if kind == "cnn" else _guide_lenet()


def _batches(kind):
    rng = np.random.RandomState(7)
    side = 12 if kind == "cnn" else 32
    total = PER_RANK * RANKS
    return [(rng.randn(total, 1, side, side).astype("float32"), rng.randint(0, 10, total).astype("int32"))
            for _ in range(STEPS)]


def _state(net):
    return {k: np.array(v) for k, v in net.state_dict().items()}


def _train(kind, init, rank=None, bucket_size=None, traced=None):
    """STEPS of SGD; rank None: one process on the whole batches, else this rank's slices;
    ``traced``: the step under ``trace(**traced)``."""
    net = _build(kind)
    net.load_state_dict(init)
    callbacks = []
    if rank is not None:
        if rank != 0:  # start from other weights: bcast_list_ must make every rank equal
            for p in net.parameters():
                p._reset(p + 1.0)
        dist.bcast_list_(net.parameters())
        callbacks = [dist.make_allreduce_cb("mean", bucket_size=bucket_size)]
    gm = GradManager().attach(net.parameters(), callbacks=callbacks)
    opt = optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()

    def step(data, label):
        with gm:
            loss = F.nn.cross_entropy(net(data), label)
            gm.backward(loss)
        opt.step()
        opt.clear_grad()

    if traced is not None:
        step = trace(step, **traced)
    for data, label in _batches(kind):
        if rank is not None:
            data, label = (a[rank * PER_RANK:(rank + 1) * PER_RANK] for a in (data, label))
        step(mge.tensor(data), mge.tensor(label))
    state = _state(net)
    if kind == "lenet":  # the torch module trained in place: its weights are megengine's
        torch_state = net.lenet_extractor_wrap.torch_module.state_dict()
        state["torch.conv1.weight"] = torch_state["conv1.weight"].numpy().copy()
    return state


TRACED = {"symbolic=False": dict(symbolic=False), "symbolic=True": dict(symbolic=True),
          "without_host": dict(symbolic=True, without_host=True)}


def _train_rank(kind, init, bucket_size, traced):
    """`_train` on this rank (module level: spawned ranks import it)."""
    return _train(kind, init, dist.get_rank(), bucket_size, traced)


@pytest.mark.parametrize("kind,bucket_size,traced,start", [
    ("cnn", 1024, None, None), ("lenet", 10 * 1024 * 1024, None, None),
    *[("cnn", 1024, m, None) for m in TRACED], ("lenet", 10 * 1024 * 1024, "without_host", None),
    ("lenet", 10 * 1024 * 1024, None, "spawn")],
    ids=["cnn-syncbn-small-buckets", "guide-lenet-one-bucket",
         *[f"cnn-traced-{m}" for m in TRACED], "guide-lenet-traced-without_host",
         "guide-lenet-spawned"])
def test_two_ranks_match_one_process_on_the_concatenated_batch(run_ranks, kind, bucket_size,
                                                                traced, start):
    # traced: the step under megengine.jit.trace, whose checked calls and replays run the
    # all-reduce callbacks' and SyncBatchNorm's collectives as the first call did. start: the
    # ranks' start method; the guide's LeNet trains a PyTorchModule, whose torch backward fails
    # in forked ranks once this process has run one where torch sees a GPU: then spawned
    traced = TRACED.get(traced)
    import torch

    torch.manual_seed(0)
    mge.random.seed(0)  # the initial weights
    # the reference runs on the CPU like the ranks (CPU workers), so that 1e-6 means the same
    # arithmetic; on a GPU machine the default device would give cuDNN's (TF32) convolutions
    previous = mge.get_default_device()
    mge.set_default_device("cpu0")
    try:
        init = _state(_build(kind))
        reference = _train(kind, init)
    finally:
        mge.set_default_device(previous)
    if kind == "lenet" and start is None and forked_torch_autograd_fails():
        start = "spawn"  # (the reference's backward above made forked ranks fail in theirs)
    results = run_ranks(_train_rank, RANKS, kind, init, bucket_size, traced, start_method=start)
    assert set(results[0]) == set(reference)
    if kind == "cnn":
        assert {"bn1.running_mean", "bn2.running_var"} <= set(reference)
    moved = max(np.abs(reference[k] - init[k]).max() for k in init)
    assert moved > 1e-3  # training changed the weights, so equality below means something
    for rank, state in enumerate(results):
        for key, want in reference.items():
            # parameters and, for the CNN, SyncBatchNorm's running statistics
            np.testing.assert_allclose(state[key], want, rtol=0, atol=1e-6,
                                       err_msg=f"rank {rank}: {key}")
    if kind == "lenet":
        np.testing.assert_array_equal(results[0]["torch.conv1.weight"],
                                      results[0]["lenet_extractor_wrap.conv1.weight"])
