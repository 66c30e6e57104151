"""Upstream data-parallel programs as users write them (upstream's guide, MegEngine/Models' train scripts, the parallelism tutorial), on 2 CPU ranks, against the same computation in one process."""
import os

import numpy as np

import megengine as mge
import megengine.autodiff as autodiff
import megengine.data as data
import megengine.distributed as dist
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim

TOL = dict(rtol=1e-5, atol=1e-6)

_rng = np.random.RandomState(0)
TRAIN_X, TRAIN_Y = _rng.randn(32, 1, 6, 6).astype("float32"), _rng.randint(0, 4, 32).astype("int32")
VALID_X, VALID_Y = _rng.randn(12, 1, 6, 6).astype("float32"), _rng.randint(0, 4, 12).astype("int32")
TRAIN, VALID = data.ArrayDataset(TRAIN_X, TRAIN_Y), data.ArrayDataset(VALID_X, VALID_Y)


def _state(module):
    return {k: np.array(v) for k, v in module.state_dict().items()}


# ----- upstream's guide: a linear classifier, a bare @dist.launcher -----

class GuideLinear(M.Module):
    def __init__(self):
        super().__init__()
        self.w = mge.Parameter(np.zeros((36, 4)))
        self.b = mge.Parameter(np.zeros((4,)))

    def forward(self, x):
        return F.matmul(F.flatten(x, 1), self.w) + self.b


def test_upstream_guides_linear_classifier(monkeypatch):
    import importlib

    # (the module; the name megengine.distributed.launcher is the class)
    launcher_module = importlib.import_module("megengine.distributed.launcher")
    # a machine of 2 cores and no GPU: the bare launcher starts one rank per core
    monkeypatch.setattr(launcher_module, "_gpu_count", lambda: 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    @dist.launcher
    def main():
        net = GuideLinear()
        if dist.get_rank() == 1:  # bcast_list_ must give every rank rank 0's start
            net.w._reset(net.w + 1.0)
        dist.bcast_list_(net.tensors())
        gm = autodiff.GradManager()
        gm.attach(net.parameters(), callbacks=[dist.make_allreduce_cb("sum")])
        opt = optim.SGD(net.parameters(), lr=0.1)
        # the DataLoader's sampler takes each rank's share: 4 of every 8 samples
        loader = data.DataLoader(TRAIN, sampler=data.SequentialSampler(TRAIN, batch_size=4))
        losses = []
        for _ in range(2):
            for x, label in loader:
                with gm:
                    loss = F.nn.cross_entropy(net(mge.tensor(x)), mge.tensor(label))
                    gm.backward(loss)
                opt.step().clear_grad()
                loss = dist.functional.all_reduce_sum(loss) / dist.get_world_size()
                losses.append(loss.item())
        return losses, _state(net)

    assert main.n_gpus == 2
    # the test's bounds, which the guide's call does not set: CPU ranks (also where the tests
    # simulate GPUs) and a time limit
    main.device_type, main.timeout = "cpu", 120
    results = main()

    # one process on the whole batches of 8; "sum" adds the two ranks' mean gradients, which
    # is twice the whole batch's mean gradient
    net = GuideLinear()
    gm = autodiff.GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for _ in range(2):
        for x, label in data.DataLoader(TRAIN, sampler=data.SequentialSampler(TRAIN, 8)):
            with gm:
                loss = F.nn.cross_entropy(net(mge.tensor(x)), mge.tensor(label))
                gm.backward(loss * 2)
            opt.step().clear_grad()
            losses.append(loss.item())
    for got_losses, got_state in results:
        np.testing.assert_allclose(got_losses, losses, **TOL)
        for k, v in _state(net).items():
            np.testing.assert_allclose(got_state[k], v, **TOL)


# ----- MegEngine/Models' classification train.py: BatchNorm, SGD, warmup, validation -----

class SmallNet(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(1, 4, 3, padding=1)
        self.bn = M.BatchNorm2d(4)
        self.fc = M.Linear(4 * 6 * 6, 4)

    def forward(self, x):
        return self.fc(F.flatten(F.relu(self.bn(self.conv(x))), 1))


STEPS, BATCH, LR = 4, 4, 0.05


def _warmup(opt, step, world_size):
    for group in opt.param_groups:
        group["lr"] = LR * world_size * (step + 1) / STEPS


def _classification_worker(save_path):
    world_size = dist.get_world_size()
    train_sampler = data.Infinite(data.RandomSampler(TRAIN, batch_size=BATCH, drop_last=True))
    train_queue = iter(data.DataLoader(TRAIN, sampler=train_sampler))
    valid_loader = data.DataLoader(
        VALID, sampler=data.SequentialSampler(VALID, batch_size=3, drop_last=False))
    model = SmallNet()  # each rank draws its own initial weights
    if dist.get_rank() == 1:  # (and here its own statistics: bcast_list_ must replace them)
        model.bn.running_var._reset(model.bn.running_var * 2)
    if world_size > 1:
        dist.bcast_list_(model.parameters())
        dist.bcast_list_(model.buffers())
    init = _state(model)
    gm = autodiff.GradManager().attach(
        model.parameters(),
        callbacks=dist.make_allreduce_cb("mean") if world_size > 1 else None)
    opt = optim.SGD(model.parameters(), lr=LR * world_size, momentum=0.9, weight_decay=1e-4)

    def train_step(image, label):
        with gm:
            logits = model(image)
            loss = F.nn.cross_entropy(logits, label)
            acc1, acc2 = F.topk_accuracy(logits, label, topk=(1, 2))
            gm.backward(loss)
            opt.step().clear_grad()
        return loss, acc1, acc2

    def valid_step(image, label):
        logits = model(image)
        loss = F.nn.cross_entropy(logits, label)
        acc1 = F.topk_accuracy(logits, label, topk=(1,))  # one k: one Tensor (upstream 1.13)
        if world_size > 1:
            loss = F.distributed.all_reduce_sum(loss) / world_size
            acc1 = F.distributed.all_reduce_sum(acc1) / world_size
        return loss, acc1

    train_log = []
    for step in range(STEPS):
        _warmup(opt, step, world_size)
        image, label = next(train_queue)
        loss, acc1, _ = train_step(mge.tensor(image, dtype="float32"),
                                   mge.tensor(label, dtype="int32"))
        train_log.append((loss.item(), acc1.item()))
    model.eval()
    valid_log = [tuple(t.item() for t in valid_step(mge.tensor(image), mge.tensor(label)))
                 for image, label in valid_loader]
    if dist.get_rank() == 0:
        mge.save({"epoch": 1, "state_dict": model.state_dict()}, save_path)
    return init, train_log, valid_log, _state(model)


def _classification_in_one_process(init):
    """The same training on the whole batches in one process. BatchNorm normalizes each rank's
    part with that part's statistics and keeps per-rank running statistics: the model runs on
    each rank's part with that rank's statistics loaded."""
    model = SmallNet()
    model.load_state_dict(init)
    stats = [(init["bn.running_mean"], init["bn.running_var"])] * 2

    def on_part(r, x):
        model.bn.running_mean._reset(mge.tensor(stats[r][0].reshape(1, 4, 1, 1)))
        model.bn.running_var._reset(mge.tensor(stats[r][1].reshape(1, 4, 1, 1)))
        logits = model(mge.tensor(x))
        stats[r] = (model.bn.running_mean.numpy().ravel(), model.bn.running_var.numpy().ravel())
        return logits

    gm = autodiff.GradManager().attach(model.parameters())
    opt = optim.SGD(model.parameters(), lr=LR * 2, momentum=0.9, weight_decay=1e-4)
    # the ranks' shared seed 0 gives one permutation; rank r's batch is every 2nd sample of
    # the whole batch, from the r-th
    whole = data.RandomSampler(TRAIN, batch_size=2 * BATCH, drop_last=True, seed=0)
    train_log = [[], []]
    for step, indices in zip(range(STEPS), whole):
        _warmup(opt, step, 2)
        with gm:
            losses = []
            for r in range(2):
                part = indices[r::2]
                logits = on_part(r, TRAIN_X[part])
                label = mge.tensor(TRAIN_Y[part])
                losses.append(F.nn.cross_entropy(logits, label))
                train_log[r].append((losses[-1].item(),
                                     F.topk_accuracy(logits, label, topk=1).item()))
            gm.backward((losses[0] + losses[1]) / 2)
        opt.step().clear_grad()
    model.eval()
    valid_log = []
    for k in range(2):  # each rank validates 2 batches of 3 of its 6 samples
        per_rank = []
        for r in range(2):
            part = np.arange(r, 12, 2)[3 * k: 3 * k + 3]
            logits, label = on_part(r, VALID_X[part]), mge.tensor(VALID_Y[part])
            per_rank.append((F.nn.cross_entropy(logits, label).item(),
                             F.topk_accuracy(logits, label, topk=1).item()))
        valid_log.append(tuple((a + b) / 2 for a, b in zip(*per_rank)))
    return train_log, valid_log, _state(model), stats


def test_models_classification_train_script(tmp_path):
    path = str(tmp_path / "checkpoint.pkl")
    port = dist.get_free_ports(1)[0]
    # Models' call: an explicit address and port, world size and first rank of this machine
    worker = dist.launcher(master_ip="localhost", port=port, world_size=2, rank_start=0,
                           n_gpus=2, device_type="cpu", timeout=120,
                           collective_timeout=30)(_classification_worker)
    results = worker(path)
    init = results[0][0]
    for k, v in init.items():  # parameters and buffers came from rank 0
        np.testing.assert_array_equal(results[1][0][k], v)
    train_log, valid_log, state, stats = _classification_in_one_process(init)
    for r, (_, got_train, got_valid, got_state) in enumerate(results):
        np.testing.assert_allclose(got_train, train_log[r], **TOL)
        np.testing.assert_allclose(got_valid, valid_log, **TOL)
        for k, v in state.items():
            if k.startswith("bn.running"):  # each rank's own, from its own parts
                v = stats[r][0] if k.endswith("mean") else stats[r][1]
            np.testing.assert_allclose(got_state[k], v, **TOL)
    saved = mge.load(path)
    assert saved["epoch"] == 1
    for k, v in results[0][3].items():
        np.testing.assert_array_equal(np.array(saved["state_dict"][k]), v)


# ----- model parallelism: the guide's pipeline, the tutorial's split convolutions -----

O, C = 4, 6  # output and input channels of the convolutions below
CONV_W = (np.arange(O * C * 9, dtype="float32").reshape(O, C, 3, 3) % 7 - 3) / 10


class WeightSplitConv(M.Conv2d):
    """Each rank holds its share of the output channels' weights and gathers them to convolve
    (the tutorial's Conv2dStyleA, the weight wrapped in a Parameter as newer upstream needs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight = mge.Parameter(dist.functional.scatter(self.weight))

    def calc_conv(self, x, weight, bias):
        return super().calc_conv(x, dist.functional.all_gather(weight), bias)


def _output_channel_split(x, weight_rows, k):
    """Batch-parallel in, output channels split: every rank convolves all ranks' samples with its
    rows of the weight, then all_to_all hands each rank its own samples' channels."""
    y = F.conv2d(dist.functional.all_gather(x), weight_rows, padding=1)
    n = x.shape[0]
    y = dist.functional.all_to_all(y)  # part i: rank i's channels of this rank's samples
    return y.reshape(k, n, -1, *y.shape[2:]).transpose(1, 0, 2, 3, 4).reshape(n, -1, *y.shape[2:])


def _input_channel_split(x, weight_columns, k):
    """Batch-parallel in, input channels split: all_to_all gives every rank its block of channels
    of all samples; the partial convolutions are summed and scattered back by sample."""
    n, c = x.shape[:2]
    x = x.reshape(n, k, c // k, *x.shape[2:]).transpose(1, 0, 2, 3, 4)
    x = dist.functional.all_to_all(x.reshape(k * n, c // k, *x.shape[3:]))
    return dist.functional.reduce_scatter_sum(F.conv2d(x, weight_columns, padding=1))


def _model_parallel_worker(x_np):
    rank, k = dist.get_rank(), dist.get_world_size()
    mge.random.seed(7)  # the same layers on both ranks
    layer1, layer2 = M.Linear(1, 1), M.Linear(1, 1)
    weights = [float(p.item()) for p in (layer1.weight, layer1.bias, layer2.weight)]
    x = mge.tensor(np.array([0.7], "float32"))
    layer = layer1 if rank == 0 else layer2
    gm = autodiff.GradManager().attach(layer.parameters())
    opt = optim.SGD(layer.parameters(), lr=1e-3)
    with gm:
        if rank == 0:
            dist.functional.remote_send(layer1(x), dest_rank=1)
            gm.backward([])  # the guide's call: this rank has no loss of its own
        else:
            gm.backward(layer2(dist.functional.remote_recv(src_rank=0)))
    out = {"pipeline": (weights, layer.weight.grad.item(), layer.bias.grad.item())}
    opt.step().clear_grad()

    # the tutorial's: the weight made equal by broadcast, then split; the same input everywhere
    weight = dist.functional.broadcast(mge.tensor(CONV_W * (rank + 1)))
    conv = WeightSplitConv(C, O, 3, padding=1)
    conv.weight[...] = dist.functional.scatter(weight)
    conv.bias[...] = 0.5

    def model_parallel_scale_grad_cb(param, grad):  # both ranks' gradients of the same loss
        return grad / dist.get_world_size()

    gm = autodiff.GradManager()
    gm.attach(conv.weight, model_parallel_scale_grad_cb)
    gm.attach(conv.bias, dist.make_allreduce_cb("MEAN"))
    with gm:
        y = conv(mge.tensor(x_np))
        gm.backward(y.mean())
    out["weight split"] = (y.numpy(), dist.functional.all_gather(conv.weight.grad).numpy(),
                           conv.bias.grad.numpy())

    # batch-parallel: each rank its own 2 samples, the weight split by rows or by columns
    mine = mge.tensor(x_np[2 * rank: 2 * rank + 2])
    rows = mge.Parameter(dist.functional.scatter(weight))
    columns = mge.Parameter(dist.functional.scatter(weight, axis=1))
    gm = autodiff.GradManager().attach([rows, columns])
    with gm:
        y_rows = _output_channel_split(mine, rows, k)
        y_columns = _input_channel_split(mine, columns, k)
        gm.backward((y_rows * y_rows).mean() + (y_columns * 2).mean())
    gathered = dist.functional.gather(y_rows)  # the whole batch's output on the root only
    out["channel splits"] = (y_rows.numpy(), y_columns.numpy(), rows.grad.numpy(),
                             columns.grad.numpy(), None if gathered is None else gathered.numpy())
    return out


def test_model_parallel_programs(run_ranks):
    x_np = np.random.RandomState(3).randn(4, C, 5, 5).astype("float32")
    results = run_ranks(_model_parallel_worker, 2, x_np)
    # the pipeline: loss = w2 * (w1 * x + b1) + b2, differentiated by hand
    (w1, b1, w2), dw1, db1 = results[0]["pipeline"]
    _, dw2, db2 = results[1]["pipeline"]
    np.testing.assert_allclose([dw1, db1], [w2 * 0.7, w2], **TOL)
    np.testing.assert_allclose([dw2, db2], [w1 * 0.7 + b1, 1.0], **TOL)

    # the split convolutions equal the whole one in one process, values and gradients
    whole = M.Conv2d(C, O, 3, padding=1)
    whole.weight[...] = CONV_W
    whole.bias[...] = 0.5
    gm = autodiff.GradManager().attach(whole.parameters())
    with gm:
        y = whole(mge.tensor(x_np))
        gm.backward(y.mean())
    for got in results:
        got_y, got_weight_grad, got_bias_grad = got["weight split"]
        np.testing.assert_allclose(got_y, y.numpy(), **TOL)
        np.testing.assert_allclose(got_weight_grad, whole.weight.grad.numpy(), **TOL)
        np.testing.assert_allclose(got_bias_grad, whole.bias.grad.numpy(), **TOL)

    # the batch-parallel splits: each rank's loss is of its own samples; a weight share's
    # gradient is that of the ranks' losses summed
    w_rows, w_columns = mge.Parameter(CONV_W), mge.Parameter(CONV_W)
    gm = autodiff.GradManager().attach([w_rows, w_columns])
    with gm:
        y = F.conv2d(mge.tensor(x_np), w_rows, padding=1)
        parts = [y[2 * r: 2 * r + 2] for r in range(2)]
        y2 = F.conv2d(mge.tensor(x_np), w_columns, padding=1)
        gm.backward(sum((p * p).mean() + (y2[2 * r: 2 * r + 2] * 2).mean()
                        for r, p in enumerate(parts)))
    for r, got in enumerate(results):
        y_rows, y_columns, rows_grad, columns_grad, gathered = got["channel splits"]
        np.testing.assert_allclose(y_rows, parts[r].numpy(), **TOL)
        np.testing.assert_allclose(y_columns, parts[r].numpy(), **TOL)
        np.testing.assert_allclose(rows_grad, w_rows.grad.numpy()[2 * r: 2 * r + 2], **TOL)
        np.testing.assert_allclose(columns_grad, w_columns.grad.numpy()[:, 3 * r: 3 * r + 3],
                                   **TOL)
        if r == 0:
            np.testing.assert_allclose(gathered, y.numpy(), **TOL)
        else:
            assert gathered is None
