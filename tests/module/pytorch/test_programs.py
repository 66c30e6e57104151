"""Whole training programs with torch modules inside megengine networks (a BatchNorm backbone
resumed from a checkpoint, an LSTM encoder, a frozen teacher, amp, MoCo, a GAN, a greedy
decoder loop, traced steps, frozen and unattached parts, a GRU, fine-tuning, a DataLoader whose
workers run torch), each against a pure-torch twin of the same network and data.

The twins compute the megengine layers (Linear, Conv2d, cross_entropy, ...) with torch's, whose
float32 rounding differs from megengine's numpy arithmetic, so losses and weights are compared
to a relative 1e-5 (the differences seen are a few float32 ulps, about 1e-7); what both sides
compute with the same kernels in the same order (traced against eager, the frozen parts) is
compared bit for bit."""
import copy
import io

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as tF

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine import amp
from megengine.autodiff import GradManager
from megengine.data import DataLoader, SequentialSampler
from megengine.data.dataset import ArrayDataset
from megengine.data.transform import Transform
from megengine.jit import trace
from megengine.module.pytorch import PyTorchModule
from devices import torch_device, torch_host

RTOL, ATOL = 1e-5, 1e-6


def _torch_twin(layer):
    """A torch Linear or Conv2d with the weights of a megengine one (megengine keeps a
    convolution's bias as (1, C, 1, 1), torch as (C,))."""
    if isinstance(layer, M.Linear):
        twin = nn.Linear(layer.in_features, layer.out_features)
    else:
        twin = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                         layer.stride, layer.padding)
    with torch.no_grad():
        twin.weight.copy_(torch.tensor(layer.weight.numpy()))
        twin.bias.copy_(torch.tensor(layer.bias.numpy()).reshape(-1))
    return twin.to(torch_device())


def _tensor(a, dtype=None):
    return torch.tensor(a, device=torch_device(), dtype=dtype)


def _assert_torch_states_equal(tmod, ref, rtol=RTOL * 10, atol=ATOL * 10):
    """Every parameter and buffer of the wrapped torch module against the twin's (a few steps
    of float32 rounding: ten times the losses' tolerance)."""
    state = tmod.state_dict()
    assert state.keys() == ref.state_dict().keys()
    for name, want in ref.state_dict().items():
        np.testing.assert_allclose(torch_host(state[name]), torch_host(want), rtol=rtol,
                                   atol=atol, err_msg=name)


def _seed():
    torch.manual_seed(0)
    np.random.seed(0)  # megengine's initialisers
    mge.random.seed(0)


# ----- a ResNet-style backbone with BatchNorm, a MultiStepLR, and a checkpoint -----

class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(tF.relu(self.bn1(self.conv1(x)))))
        return tF.relu(y + (x if self.down is None else self.down(x)))


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4),
                                  nn.ReLU())
        self.layer1 = _Block(4, 4, 1)
        self.layer2 = _Block(4, 8, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1)


class _Classifier(M.Module):
    """A wrapped torch backbone and a megengine head of ``features`` -> ``classes``."""

    def __init__(self, backbone, features=8, classes=5):
        super().__init__()
        self.backbone = PyTorchModule(backbone)
        self.head = M.Linear(features, classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def _image_batches(steps, seed=1):
    rng = np.random.RandomState(seed)
    return [(rng.randn(6, 3, 8, 8).astype("float32"), rng.randint(0, 5, 6).astype("int32"))
            for _ in range(steps)]


def _sgd(params):
    return optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)


def _schedule(opt):
    return optim.MultiStepLR(opt, milestones=[2, 5], gamma=0.1)


@pytest.mark.parametrize("order", ["scheduler first", "optimizer state first"])
def test_a_batch_norm_backbone_resumed_from_a_checkpoint_trains_like_torch(order):
    """Either order of building the scheduler and loading the optimizer's state resumes at the
    loaded lr (upstream accepts only the first; the second trained the first resumed epoch
    at the initial lr in earlier versions of this fork)."""
    _seed()
    backbone = _Backbone().to(torch_device())
    net = _Classifier(backbone)
    ref = nn.Sequential(copy.deepcopy(backbone), _torch_twin(net.head))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ref_sched = torch.optim.lr_scheduler.MultiStepLR(ref_opt, milestones=[2, 5], gamma=0.1)
    opt = _sgd(net.parameters())
    sched = _schedule(opt)
    gm = GradManager().attach(net.parameters())
    ref.train()
    for step, (x, y) in enumerate(_image_batches(8)):
        if step == 4:  # a checkpoint, loaded into a network built again with other weights
            buffer = io.BytesIO()
            mge.save({"net": net.state_dict(), "opt": opt.state_dict(),
                      "sched": sched.state_dict()}, buffer)
            buffer.seek(0)
            checkpoint = mge.load(buffer)
            torch.manual_seed(123)
            backbone = _Backbone().to(torch_device())
            net = _Classifier(backbone)
            assert set(checkpoint["net"]) == set(net.state_dict())
            net.load_state_dict(checkpoint["net"])
            opt = _sgd(net.parameters())
            if order == "scheduler first":
                sched = _schedule(opt)
                opt.load_state_dict(checkpoint["opt"])
            else:
                opt.load_state_dict(checkpoint["opt"])
                sched = _schedule(opt)
            sched.load_state_dict(checkpoint["sched"])
            gm = GradManager().attach(net.parameters())
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
        net.train()
        with gm:
            loss = F.nn.cross_entropy(net(mge.tensor(x)), mge.tensor(y))
            gm.backward(loss)
        opt.step().clear_grad()
        sched.step()
        ref_opt.zero_grad()
        ref_loss = tF.cross_entropy(ref(_tensor(x)), _tensor(y, torch.int64))
        ref_loss.backward()
        ref_opt.step()
        ref_sched.step()
        np.testing.assert_allclose(loss.numpy(), torch_host(ref_loss), rtol=RTOL,
                                   err_msg=f"loss of step {step}")
    _assert_torch_states_equal(backbone, ref[0])
    assert backbone.layer2.bn1.num_batches_tracked.item() == 8  # torch's buffers, updated in place
    np.testing.assert_allclose(net.head.weight.numpy(), torch_host(ref[1].weight), rtol=RTOL * 10,
                               atol=ATOL * 10)
    net.eval()
    ref.eval()
    assert not backbone.training and not backbone.layer1.bn1.training
    x = _image_batches(1, seed=2)[0][0]
    np.testing.assert_allclose(net(mge.tensor(x)).numpy(), torch_host(ref(_tensor(x))),
                               rtol=RTOL * 10, atol=ATOL * 10)


# ----- an LSTM encoder returning (output, (h, c)) and a megengine attention decoder -----

VOCAB, EMBED, HIDDEN, CLASSES = 11, 6, 5, 3


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED, padding_idx=0)
        self.rnn = nn.LSTM(EMBED, HIDDEN, num_layers=2, batch_first=True)

    def forward(self, tokens):
        return self.rnn(self.embed(tokens))


class _AttentionClassifier(M.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = PyTorchModule(encoder, output_cnt=3)
        self.query = M.Linear(HIDDEN, HIDDEN)
        self.out = M.Linear(2 * HIDDEN, CLASSES)

    def forward(self, tokens):
        seq, (h, c) = self.encoder(tokens)
        score = F.squeeze(F.matmul(seq, F.expand_dims(self.query(h[-1]), 2)), 2)
        context = F.sum(seq * F.expand_dims(F.softmax(score, axis=1), 2), axis=1)
        return self.out(F.concat([context, c[-1]], axis=1))


class _TorchAttentionClassifier(nn.Module):
    def __init__(self, encoder, net):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.query = _torch_twin(net.query)
        self.out = _torch_twin(net.out)

    def forward(self, tokens):
        seq, (h, c) = self.encoder(tokens)
        score = (seq @ self.query(h[-1])[:, :, None])[:, :, 0]
        context = (seq * score.softmax(1)[:, :, None]).sum(1)
        return self.out(torch.cat([context, c[-1]], 1))


def _token_batches(steps):
    rng = np.random.RandomState(0)
    return [(rng.randint(0, VOCAB, (4, 7)).astype("int64"),
             rng.randint(0, CLASSES, 4).astype("int32")) for _ in range(steps)]


def test_an_lstm_encoder_with_a_megengine_decoder_and_clipped_gradients_trains_like_torch():
    _seed()
    encoder = _Encoder().to(torch_device())
    net = _AttentionClassifier(encoder)
    ref = _TorchAttentionClassifier(encoder, net)
    opt = optim.Adam(net.parameters(), lr=0.05)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    gm = GradManager().attach(net.parameters())
    clipped = 0
    for step, (tokens, labels) in enumerate(_token_batches(5)):
        with gm:
            loss = F.nn.cross_entropy(net(mge.tensor(tokens, dtype="int64")), mge.tensor(labels))
            gm.backward(loss)
        norm = optim.clip_grad_norm(net.parameters(), max_norm=0.5)
        opt.step().clear_grad()
        ref_opt.zero_grad()
        ref_loss = tF.cross_entropy(ref(_tensor(tokens)), _tensor(labels, torch.int64))
        ref_loss.backward()
        ref_norm = nn.utils.clip_grad_norm_(ref.parameters(), max_norm=0.5)
        ref_opt.step()
        np.testing.assert_allclose(loss.numpy(), torch_host(ref_loss), rtol=RTOL,
                                   err_msg=f"loss of step {step}")
        np.testing.assert_allclose(norm.numpy(), torch_host(ref_norm), rtol=RTOL,
                                   err_msg=f"gradient norm of step {step}")
        clipped += float(torch_host(ref_norm)) > 0.5
    assert clipped  # the clipping did something
    _assert_torch_states_equal(encoder, ref.encoder)
    assert not encoder.embed.weight[0].any()  # the padding row: no gradient, no Adam step
    for name in ("query", "out"):
        np.testing.assert_allclose(getattr(net, name).weight.numpy(),
                                   torch_host(getattr(ref, name).weight), rtol=RTOL * 10,
                                   atol=ATOL * 10, err_msg=name)


# ----- knowledge distillation from a frozen torch teacher -----

TEMPERATURE = 2.0


class _Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.5))
        self.fc = nn.Linear(6 * 4 * 4, 4)
        self.graph_built = []  # whether each call ran with a torch graph

    def forward(self, x):
        self.graph_built.append(torch.is_grad_enabled())
        return self.fc(self.features(x).flatten(1))


class _Student(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(1, 3, 3, padding=1)
        self.fc = M.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(F.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


class _Distiller(M.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher = PyTorchModule(teacher)
        self.student = _Student()

    def forward(self, x, labels):
        s, t = self.student(x) / TEMPERATURE, self.teacher(x) / TEMPERATURE
        kl = F.sum(F.softmax(t, axis=1) * (F.nn.logsoftmax(t, axis=1)
                                           - F.nn.logsoftmax(s, axis=1)), axis=1)
        return F.mean(kl) * TEMPERATURE ** 2 + F.nn.cross_entropy(s * TEMPERATURE, labels)


def _trained_teacher():
    teacher = _Teacher()
    with torch.no_grad():  # running statistics that are not the defaults
        teacher.features[1].running_mean.uniform_(-0.5, 0.5)
        teacher.features[1].running_var.uniform_(0.5, 2.0)
    return teacher.to(torch_device()).eval().requires_grad_(False)


def _digit_batches(steps):
    rng = np.random.RandomState(0)
    return [(rng.randn(5, 1, 8, 8).astype("float32"), rng.randint(0, 4, 5).astype("int32"))
            for _ in range(steps)]


def test_a_megengine_student_distilled_from_a_frozen_torch_teacher_trains_like_torch():
    _seed()
    teacher = _trained_teacher()
    before = copy.deepcopy(teacher.state_dict())
    net = _Distiller(teacher)
    assert not teacher.training  # the wrapper starts in the torch module's mode
    ref = nn.Sequential(_torch_twin(net.student.conv), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        _torch_twin(net.student.fc))
    students = list(net.student.parameters())
    gm = GradManager().attach(students)
    opt = optim.SGD(students, lr=0.1, momentum=0.9, nesterov=True)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for step, (x, y) in enumerate(_digit_batches(4)):
        with gm:
            loss = net(mge.tensor(x), mge.tensor(y))
            gm.backward(loss)
        opt.step().clear_grad()
        ref_opt.zero_grad()
        s = ref(_tensor(x))
        with torch.no_grad():
            t = teacher(_tensor(x))
        kl = tF.kl_div(tF.log_softmax(s / TEMPERATURE, 1), tF.log_softmax(t / TEMPERATURE, 1),
                       log_target=True, reduction="batchmean")
        ref_loss = kl * TEMPERATURE ** 2 + tF.cross_entropy(s, _tensor(y, torch.int64))
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(loss.numpy(), torch_host(ref_loss), rtol=RTOL,
                                   err_msg=f"loss of step {step}")
    assert teacher.graph_built[::2] == [False] * 4  # the distiller's calls (odd: the twin's)
    for name, value in teacher.state_dict().items():  # eval mode: statistics untouched
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in net.teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    for mine, theirs in zip([net.student.conv.weight, net.student.fc.weight],
                            [ref[0].weight, ref[4].weight]):
        np.testing.assert_allclose(mine.numpy(), torch_host(theirs), rtol=RTOL * 10,
                                   atol=ATOL * 10)
    assert {k.split(".")[0] for k in net.state_dict()} == {"teacher", "student"}


# ----- megengine.amp around a torch block -----

class _NormBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.dtypes = []  # the dtype the linear layer computed in, per call

    def forward(self, x):
        h = self.fc(x)
        self.dtypes.append(h.dtype)
        return tF.gelu(self.norm(h))


def _feature_batches(steps):
    rng = np.random.RandomState(0)
    return [(rng.randn(4, 8).astype("float32"), rng.randint(0, 3, 4).astype("int32"))
            for _ in range(steps)]


def test_autocast_and_grad_scaler_around_a_torch_block_skip_and_scale_like_torchs():
    """A first scale of 2**18 overflows float16 gradients on both sides: the same steps are
    skipped and the scale backs off and grows (every 2 clean steps) through the same values."""
    _seed()
    block = _NormBlock().to(torch_device())
    net = _Classifier(block, 16, 3)
    ref = nn.Sequential(copy.deepcopy(block), _torch_twin(net.head))
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scaler = amp.GradScaler(init_scale=2.0 ** 18, growth_interval=2)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ref_scaler = torch.amp.GradScaler(torch.device(torch_device()).type, init_scale=2.0 ** 18,
                                      growth_interval=2)
    scales = []
    for step, (x, y) in enumerate(_feature_batches(6)):
        with gm:
            with amp.autocast():
                logits = net(mge.tensor(x))
                loss = F.nn.cross_entropy(logits, mge.tensor(y))
            scaler.backward(gm, loss)
        opt.step().clear_grad()
        with torch.autocast(torch.device(torch_device()).type, dtype=torch.float16):
            ref_logits = ref(_tensor(x))
        ref_loss = tF.cross_entropy(ref_logits.float(), _tensor(y, torch.int64))
        ref_opt.zero_grad()
        ref_scaler.scale(ref_loss).backward()
        ref_scaler.step(ref_opt)
        ref_scaler.update()
        assert logits.dtype == np.float16 and ref_logits.dtype == torch.float16
        # float16 logits: a rounding apart is 1e-3 relative
        np.testing.assert_allclose(loss.numpy(), torch_host(ref_loss), rtol=2e-3,
                                   err_msg=f"loss of step {step}")
        assert scaler.scale_factor == ref_scaler.get_scale(), step
        scales.append(scaler.scale_factor)
    assert scales[0] < 2.0 ** 18 and max(np.diff(scales)) > 0  # backed off and grew again
    assert block.dtypes == ref[0].dtypes == [torch.float16] * 6
    _assert_torch_states_equal(block, ref[0], rtol=2e-3, atol=1e-4)


# ----- a MoCo-style module writing its key encoder and its queue in forward -----

class _MoCo(nn.Module):
    """Momentum contrast: the key encoder follows the trained query encoder by a moving average
    written in place inside forward, and the keys go into a queue buffer written in place."""

    def __init__(self, dim=4, size=8, momentum=0.9, temperature=0.2):
        super().__init__()
        self.size, self.momentum, self.temperature = size, momentum, temperature
        self.encoder_q = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(),
                                       nn.Linear(6, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
        self.register_buffer("queue", tF.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def forward(self, im_q, im_k):
        q = tF.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
                pk.mul_(self.momentum).add_(pq, alpha=1 - self.momentum)
            k = tF.normalize(self.encoder_k(im_k), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ self.queue.clone()], 1)
        labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
        with torch.no_grad():
            ptr = int(self.queue_ptr)
            self.queue[:, ptr:ptr + len(k)] = k.T
            self.queue_ptr[0] = (ptr + len(k)) % self.size
        return logits / self.temperature, labels


def _view_pairs(steps):
    rng = np.random.RandomState(0)
    pairs = []
    for _ in range(steps):
        x = rng.randn(4, 5).astype("float32")
        pairs.append([x + 0.1 * rng.randn(4, 5).astype("float32") for _ in range(2)])
    return pairs


def test_a_moco_module_writing_its_key_encoder_and_queue_in_forward_trains_like_torch():
    """Writes into torch parameters and buffers during a recorded forward reach megengine's
    mirrors (shared memory), the int64 labels come back as int64, and the frozen key encoder
    gets no gradient, so weight decay skips it as torch's does."""
    _seed()
    moco = _MoCo().to(torch_device())
    ref = copy.deepcopy(moco)
    wrap = PyTorchModule(moco, output_cnt=2)
    gm = GradManager().attach(wrap.parameters())
    opt = optim.SGD(wrap.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for step, (a, b) in enumerate(_view_pairs(5)):
        with gm:
            logits, labels = wrap(mge.tensor(a), mge.tensor(b))
            loss = F.nn.cross_entropy(logits, labels)
            gm.backward(loss)
        assert labels.dtype == np.int64
        assert all(p.grad is None for p in wrap.encoder_k.parameters())
        opt.step().clear_grad()
        ref_opt.zero_grad()
        ref_logits, ref_labels = ref(_tensor(a), _tensor(b))
        ref_loss = tF.cross_entropy(ref_logits, ref_labels)
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(loss.numpy(), torch_host(ref_loss), rtol=RTOL,
                                   err_msg=f"loss of step {step}")
    assert moco.queue_ptr.item() == 20 % 8
    np.testing.assert_array_equal(wrap.queue.numpy(), torch_host(moco.queue))  # one memory
    _assert_torch_states_equal(moco, ref)


# ----- a GAN: a torch generator and a megengine discriminator -----

class _Discriminator(M.Module):
    def __init__(self):
        super().__init__()
        self.l1 = M.Linear(2, 8)
        self.l2 = M.Linear(8, 1)

    def forward(self, x):
        return self.l2(F.leaky_relu(self.l1(x), 0.2))


def _bce_with_logits(logits, target):
    """Binary cross-entropy of logits against a constant target, computed stably."""
    return F.mean(F.relu(logits) - logits * target + F.log(1 + F.exp(-F.abs(logits))))


def test_a_gan_with_a_torch_generator_and_two_grad_managers_trains_like_torch():
    """The discriminator's step takes the generator's output detached; the generator's step
    goes through the discriminator, whose parameters its GradManager does not attach (they
    get no gradient). The generator's linear layer before batch norm has no bias: a bias there
    has a gradient of rounding noise only, which Adam scales up to steps of lr on either side."""
    _seed()
    generator = nn.Sequential(nn.Linear(3, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
                              nn.Linear(8, 2)).to(torch_device())
    ref_g = copy.deepcopy(generator)
    gen, disc = PyTorchModule(generator), _Discriminator()
    ref_d = nn.Sequential(_torch_twin(disc.l1), nn.LeakyReLU(0.2), _torch_twin(disc.l2))
    gm_d, gm_g = GradManager().attach(disc.parameters()), GradManager().attach(gen.parameters())
    opt_d = optim.Adam(disc.parameters(), lr=1e-2, betas=(0.5, 0.999))
    opt_g = optim.Adam(gen.parameters(), lr=1e-2, betas=(0.5, 0.999))
    ref_opt_d = torch.optim.Adam(ref_d.parameters(), lr=1e-2, betas=(0.5, 0.999))
    ref_opt_g = torch.optim.Adam(ref_g.parameters(), lr=1e-2, betas=(0.5, 0.999))
    ones, zeros = _tensor(np.ones((6, 1), "float32")), _tensor(np.zeros((6, 1), "float32"))
    rng = np.random.RandomState(0)
    for step in range(4):
        real, z = rng.randn(6, 2).astype("float32") + 2, rng.randn(6, 3).astype("float32")
        with gm_d:
            fake = gen(mge.tensor(z)).detach()
            loss_d = (_bce_with_logits(disc(mge.tensor(real)), 1.0)
                      + _bce_with_logits(disc(fake), 0.0))
            gm_d.backward(loss_d)
        assert all(p.grad is None for p in gen.parameters())
        opt_d.step().clear_grad()
        with gm_g:
            loss_g = _bce_with_logits(disc(gen(mge.tensor(z))), 1.0)
            gm_g.backward(loss_g)
        assert all(p.grad is None for p in disc.parameters())
        opt_g.step().clear_grad()
        ref_opt_d.zero_grad()
        ref_loss_d = (tF.binary_cross_entropy_with_logits(ref_d(_tensor(real)), ones)
                      + tF.binary_cross_entropy_with_logits(ref_d(ref_g(_tensor(z)).detach()),
                                                            zeros))
        ref_loss_d.backward()
        ref_opt_d.step()
        ref_opt_g.zero_grad()
        ref_loss_g = tF.binary_cross_entropy_with_logits(ref_d(ref_g(_tensor(z))), ones)
        ref_loss_g.backward()
        ref_opt_g.step()
        for got, want, name in ((loss_d, ref_loss_d, "D"), (loss_g, ref_loss_g, "G")):
            np.testing.assert_allclose(got.numpy(), torch_host(want), rtol=RTOL,
                                       err_msg=f"{name} loss of step {step}")
    _assert_torch_states_equal(generator, ref_g)
    np.testing.assert_allclose(disc.l1.weight.numpy(), torch_host(ref_d[0].weight),
                               rtol=RTOL * 10, atol=ATOL * 10)


# ----- a greedy decoder loop calling a torch cell once per time step -----

STEPS = 4


class _Cell(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.cell = nn.GRUCell(HIDDEN, HIDDEN)

    def forward(self, token, h):
        return self.cell(self.embed(token), h)


class _GreedyDecoder(M.Module):
    """The state crosses from torch to megengine and back at every step, and megengine's argmax
    (int32) is the next step's token."""

    def __init__(self, cell):
        super().__init__()
        self.cell = PyTorchModule(cell)
        self.mix = M.Linear(HIDDEN, HIDDEN)
        self.out = M.Linear(HIDDEN, VOCAB)

    def forward(self, h, token):
        logits = []
        for _ in range(STEPS):
            h = self.cell(token, h)
            h = F.tanh(self.mix(h)) + h
            logits.append(self.out(h))
            token = F.argmax(logits[-1], axis=1).astype("int32")
        return F.stack(logits, 1)


def _sequence_batches(steps):
    rng = np.random.RandomState(0)
    return [(rng.randn(3, HIDDEN).astype("float32"), rng.randint(0, VOCAB, 3).astype("int32"),
             rng.randint(0, VOCAB, (3, STEPS)).astype("int32")) for _ in range(steps)]


def _decoder_program(step_fn_of):
    """The greedy decoder: one wrapper called STEPS times in each traced step."""
    net = _GreedyDecoder(_Cell().to(torch_device()))
    gm = GradManager().attach(net.parameters())
    opt = optim.Adam(net.parameters(), lr=0.02)

    def step(h, token, target):
        with gm:
            logits = net(h, token)
            loss = F.nn.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    step = step_fn_of(step)
    return [step(*(mge.tensor(a) for a in batch)).numpy()
            for batch in _sequence_batches(4)], net


def test_a_greedy_decoder_loop_calling_a_torch_cell_per_step_trains_like_torch():
    _seed()
    losses, net = _decoder_program(lambda step: step)
    _seed()
    cell = _Cell().to(torch_device())
    net0 = _GreedyDecoder(copy.deepcopy(cell))  # the megengine layers as they started
    mix, out = _torch_twin(net0.mix), _torch_twin(net0.out)
    ref_opt = torch.optim.Adam([*cell.parameters(), *mix.parameters(), *out.parameters()],
                               lr=0.02)
    for step, (h, token, target) in enumerate(_sequence_batches(4)):
        h, token, logits = _tensor(h), _tensor(token), []
        for _ in range(STEPS):
            h = cell(token, h)
            h = torch.tanh(mix(h)) + h
            logits.append(out(h))
            token = logits[-1].argmax(1).int()
        ref_loss = tF.cross_entropy(torch.stack(logits, 1).reshape(-1, VOCAB),
                                    _tensor(target, torch.int64).reshape(-1))
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(losses[step], torch_host(ref_loss), rtol=RTOL,
                                   err_msg=f"loss of step {step}")
    _assert_torch_states_equal(net.cell.torch_module, cell)


# ----- traced training steps against eager ones -----

def _bn_program(step_fn_of):
    """The BatchNorm classifier trained 4 steps, the lr cut by a MultiStepLR between calls;
    returns the losses, the final state and an eval output."""
    net = _Classifier(_Backbone().to(torch_device()))
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = optim.MultiStepLR(opt, milestones=[2], gamma=0.1)
    gm = GradManager().attach(net.parameters())

    def step(x, y):
        with gm:
            loss = F.nn.cross_entropy(net(x), y)
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    step = step_fn_of(step)
    results = []
    for x, y in _image_batches(4):
        results.append(step(mge.tensor(x), mge.tensor(y)).numpy())
        sched.step()
    net.eval()
    results.append(net(mge.tensor(x)).numpy())
    return results, net


def _lstm_program(step_fn_of):
    """The LSTM classifier (int64 ids, three outputs) with clip_grad_norm inside the step."""
    net = _AttentionClassifier(_Encoder().to(torch_device()))
    opt = optim.Adam(net.parameters(), lr=0.05)
    gm = GradManager().attach(net.parameters())

    def step(tokens, labels):
        with gm:
            loss = F.nn.cross_entropy(net(tokens), labels)
            gm.backward(loss)
        norm = optim.clip_grad_norm(net.parameters(), max_norm=0.5)
        opt.step().clear_grad()
        return loss, norm

    step = step_fn_of(step)
    results = []
    for tokens, labels in _token_batches(4):
        results.extend(o.numpy() for o in step(mge.tensor(tokens, dtype="int64"),
                                               mge.tensor(labels)))
    return results, net


def _amp_program(step_fn_of):
    """The amp network, whose scaler skips, backs off and grows between traced calls."""
    net = _Classifier(_NormBlock().to(torch_device()), 16, 3)
    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scaler = amp.GradScaler(init_scale=2.0 ** 18, growth_interval=2)

    def step(x, y):
        with gm:
            with amp.autocast():
                loss = F.nn.cross_entropy(net(x), y)
            scaler.backward(gm, loss)
        opt.step().clear_grad()
        return loss

    step = step_fn_of(step)
    results = []
    for x, y in _feature_batches(6):
        results += [step(mge.tensor(x), mge.tensor(y)).numpy(), np.float64(scaler.scale_factor)]
    return results, net


def _distillation_program(step_fn_of):
    """The distiller: a torch call that needs no gradient inside the traced step."""
    net = _Distiller(_trained_teacher())
    students = list(net.student.parameters())
    gm = GradManager().attach(students)
    opt = optim.SGD(students, lr=0.1, momentum=0.9, nesterov=True)

    def step(x, y):
        with gm:
            loss = net(x, y)
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    step = step_fn_of(step)
    return [step(mge.tensor(x), mge.tensor(y)).numpy() for x, y in _digit_batches(4)], net


def _moco_program(step_fn_of):
    """The MoCo module, which writes torch state in forward and reads its queue pointer on the
    host, whole in one wrapper."""
    wrap = PyTorchModule(_MoCo().to(torch_device()), output_cnt=2)
    gm = GradManager().attach(wrap.parameters())
    opt = optim.SGD(wrap.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    def step(a, b):
        with gm:
            loss = F.nn.cross_entropy(*wrap(a, b))
            gm.backward(loss)
        opt.step().clear_grad()
        return loss

    step = step_fn_of(step)
    return [step(mge.tensor(a), mge.tensor(b)).numpy() for a, b in _view_pairs(5)], wrap


@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("program", [_bn_program, _lstm_program, _amp_program,
                                     _distillation_program, _moco_program, _decoder_program])
def test_traced_training_steps_equal_eager_ones_bit_for_bit(program, symbolic):
    _seed()
    eager, eager_net = program(lambda step: step)
    _seed()
    traced, traced_net = program(lambda step: trace(step, symbolic=symbolic))
    assert len(traced) == len(eager)
    for i, (got, want) in enumerate(zip(traced, eager)):
        np.testing.assert_array_equal(got, want, err_msg=f"result {i}")
    want_state = eager_net.state_dict()
    for name, value in traced_net.state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(want_state[name]), name)


# ----- frozen parts, unattached layers, inputs of other dtypes and layouts -----

class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(9, 4)
        self.proj = nn.Linear(6, 4)
        self.mix = nn.Linear(8, 4)

    def forward(self, ids, feats, gate):
        h = self.mix(torch.cat([self.embed(ids), self.proj(feats)], 1))
        return tF.relu(h) * gate.to(h.dtype)


class _TaggerNet(M.Module):
    def __init__(self, tagger):
        super().__init__()
        self.tagger = PyTorchModule(tagger)
        self.head = M.Linear(4, 2)

    def forward(self, ids, feats, gate):
        return self.head(self.tagger(ids, feats, gate))


def test_frozen_and_unattached_parts_with_int64_float16_and_transposed_inputs_train_like_torch():
    """Pretrained embeddings frozen on the torch side, a layer the optimizer has but the
    GradManager does not (both stay bit for bit), int64 ids, a float32 input transposed by
    megengine (non-contiguous) and a float16 one, both with gradients."""
    _seed()
    tagger = _Tagger().to(torch_device())
    tagger.embed.requires_grad_(False)
    net = _TaggerNet(tagger)
    ref = nn.ModuleDict({"tagger": copy.deepcopy(tagger), "head": _torch_twin(net.head)})
    gm = GradManager().attach([*net.tagger.mix.parameters(), *net.head.parameters()])
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    ref_opt = torch.optim.SGD([*ref["tagger"].mix.parameters(), *ref["head"].parameters()],
                              lr=0.1, momentum=0.9, weight_decay=1e-3)
    frozen = {k: v.clone() for k, v in tagger.state_dict().items() if not k.startswith("mix")}
    rng = np.random.RandomState(0)
    for step in range(3):
        ids = rng.randint(0, 9, 5).astype("int64")
        stored = rng.randn(6, 5).astype("float32")  # (features, batch): used transposed
        gate = rng.rand(5, 4).astype("float16")
        y = rng.randint(0, 2, 5).astype("int32")
        feats = F.transpose(mge.tensor(stored), (1, 0))
        g = mge.tensor(gate, dtype="float16")
        with gm:
            gm.attach([feats, g])
            loss = F.nn.cross_entropy(net(mge.tensor(ids, dtype="int64"), feats, g),
                                      mge.tensor(y))
            gm.backward(loss)
        assert all(p.grad is None for p in net.tagger.embed.parameters())
        assert all(p.grad is None for p in net.tagger.proj.parameters())
        opt.step()
        ref_feats = _tensor(stored).t().requires_grad_()
        ref_gate = _tensor(gate).requires_grad_()
        ref_opt.zero_grad()
        ref_loss = tF.cross_entropy(ref["head"](ref["tagger"](_tensor(ids), ref_feats, ref_gate)),
                                    _tensor(y, torch.int64))
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(loss.numpy(), torch_host(ref_loss), rtol=RTOL,
                                   err_msg=f"loss of step {step}")
        np.testing.assert_allclose(feats.grad.numpy(), torch_host(ref_feats.grad), rtol=RTOL,
                                   atol=ATOL)
        assert g.grad.dtype == np.float16  # as torch's: float16 (1e-3 apart at most)
        np.testing.assert_allclose(g.grad.numpy().astype("float32"),
                                   torch_host(ref_gate.grad).astype("float32"), rtol=1e-3,
                                   atol=1e-4)
        opt.clear_grad()
    for name, value in frozen.items():
        assert torch.equal(tagger.state_dict()[name], value), name
    _assert_torch_states_equal(tagger, ref["tagger"])
    assert sorted(net.state_dict()) == sorted(
        ["head.weight", "head.bias"] + [f"tagger.{k}" for k in tagger.state_dict()])


# ----- a GRU whose initial state megengine computes -----

class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.gru = nn.GRU(4, 5, batch_first=True)

    def forward(self, x, h0):
        return self.gru(self.inp(x), h0)


class _Seq2One(M.Module):
    def __init__(self, decoder):
        super().__init__()
        self.init = M.Linear(2, 5)
        self.decoder = PyTorchModule(decoder, output_cnt=2)
        self.head = M.Linear(5, 1)

    def forward(self, x, z):
        out, h = self.decoder(x, F.expand_dims(F.tanh(self.init(z)), 0))
        return F.mean(self.head(out) ** 2) + F.mean(h ** 2)


def test_a_gru_started_from_a_megengine_state_with_adamw_and_both_clippings_trains_like_torch():
    """Gradients flow into megengine through the GRU's initial state; AdamW's weight decay and
    both clippings pass over the frozen input layer, which has no gradient, as torch's do."""
    _seed()
    decoder = _Decoder().to(torch_device())
    decoder.inp.requires_grad_(False)
    net = _Seq2One(decoder)
    init, ref_decoder, head = _torch_twin(net.init), copy.deepcopy(decoder), _torch_twin(net.head)
    ref_params = [*init.parameters(), *ref_decoder.parameters(), *head.parameters()]
    gm = GradManager().attach(net.parameters())
    opt = optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref_params, lr=0.05, weight_decay=0.1)
    rng = np.random.RandomState(0)
    for step in range(4):
        x, z = rng.randn(3, 6, 3).astype("float32"), rng.randn(3, 2).astype("float32")
        with gm:
            loss = net(mge.tensor(x), mge.tensor(z))
            gm.backward(loss)
        norm = optim.clip_grad_norm(net.parameters(), 0.3)
        optim.clip_grad_value(net.parameters(), -0.05, 0.05)
        opt.step().clear_grad()
        ref_opt.zero_grad()
        out, h = ref_decoder(_tensor(x), torch.tanh(init(_tensor(z)))[None])
        ref_loss = (head(out) ** 2).mean() + (h ** 2).mean()
        ref_loss.backward()
        ref_norm = nn.utils.clip_grad_norm_(ref_params, 0.3)
        nn.utils.clip_grad_value_(ref_params, 0.05)
        ref_opt.step()
        np.testing.assert_allclose(loss.numpy(), torch_host(ref_loss), rtol=RTOL,
                                   err_msg=f"loss of step {step}")
        np.testing.assert_allclose(norm.numpy(), torch_host(ref_norm), rtol=RTOL)
    _assert_torch_states_equal(decoder, ref_decoder)
    for mine, theirs in ((net.init, init), (net.head, head)):
        np.testing.assert_allclose(mine.weight.numpy(), torch_host(theirs.weight),
                                   rtol=RTOL * 10, atol=ATOL * 10)


# ----- fine-tuning from torch weights, with parameter groups and a whole-network checkpoint -----

def _small_backbone():
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).to(torch_device())


def _groups(net):
    return optim.SGD([{"params": net.backbone.parameters(), "lr": 0.01},
                      {"params": net.head.parameters()}], lr=0.1, momentum=0.9)


def test_fine_tuning_torch_weights_with_parameter_groups_and_a_whole_network_checkpoint():
    """Pretrained weights from a ``torch.save`` file through ``load_torch_state_dict``, the
    backbone at a tenth of the head's lr, and halfway the whole network and the optimizer's
    state through ``mge.save``/``mge.load``; the loaded network trains on like the twin."""
    _seed()
    pretrained = _small_backbone()
    with torch.no_grad():
        pretrained[1].running_mean.fill_(0.3)
        pretrained[1].running_var.fill_(2.0)
    weights = io.BytesIO()
    torch.save(pretrained.state_dict(), weights)
    weights.seek(0)
    net = _Classifier(_small_backbone(), 4, 3)
    net.backbone.load_torch_state_dict(torch.load(weights))
    ref = nn.Sequential(copy.deepcopy(pretrained), _torch_twin(net.head))
    ref_opt = torch.optim.SGD([{"params": ref[0].parameters(), "lr": 0.01},
                               {"params": ref[1].parameters()}], lr=0.1, momentum=0.9)
    opt = _groups(net)
    gm = GradManager().attach(net.parameters())
    rng = np.random.RandomState(0)
    for step in range(6):
        if step == 3:
            buffer = io.BytesIO()
            mge.save({"net": net, "opt": opt.state_dict()}, buffer)
            buffer.seek(0)
            checkpoint = mge.load(buffer)
            net = checkpoint["net"]
            opt = _groups(net)
            opt.load_state_dict(checkpoint["opt"])
            gm = GradManager().attach(net.parameters())
        x, y = rng.randn(4, 2, 5, 5).astype("float32"), rng.randint(0, 3, 4).astype("int32")
        with gm:
            loss = F.nn.cross_entropy(net(mge.tensor(x)), mge.tensor(y))
            gm.backward(loss)
        opt.step().clear_grad()
        ref_opt.zero_grad()
        ref_loss = tF.cross_entropy(ref(_tensor(x)), _tensor(y, torch.int64))
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(loss.numpy(), torch_host(ref_loss), rtol=RTOL,
                                   err_msg=f"loss of step {step}")
    _assert_torch_states_equal(net.backbone.torch_module, ref[0])


# ----- a DataLoader whose worker processes run a torch module, feeding a hybrid network -----

class _TorchSmoothing(Transform):
    """Smooths each image with a fixed torch convolution, wrapped, on the CPU: torch and the
    bridge's compiled operator run in the loader's forked workers."""

    def __init__(self):
        self.blur = PyTorchModule(_blur(), device="cpu0")

    def apply(self, sample):
        image, label = sample
        return self.blur(mge.tensor(image[None], device="cpu0")).numpy()[0], label


def _blur():
    blur = nn.Conv2d(2, 2, 3, padding=1, groups=2, bias=False)
    with torch.no_grad():
        blur.weight.copy_(torch.arange(18.0).reshape(2, 1, 3, 3) / 36)
    return blur.eval()


def test_a_dataloader_with_workers_running_torch_feeds_a_hybrid_network_like_torch():
    """Torch ran in this process (threads started, the operator loaded) before the loader
    forks its two workers; batches come in order, so a twin reading the data itself trains
    alike."""
    _seed()
    net = _Classifier(_small_backbone(), 4, 3)
    ref = nn.Sequential(copy.deepcopy(net.backbone.torch_module), _torch_twin(net.head))
    blur = _blur().to(torch_device())
    rng = np.random.RandomState(0)
    images = rng.randn(8, 2, 5, 5).astype("float32")
    labels = rng.randint(0, 3, 8).astype("int32")
    smoothing = _TorchSmoothing()
    smoothing.apply((images[0], labels[0]))  # torch used in this process first
    dataset = ArrayDataset(images, labels)
    # (a worker stuck in torch after the fork fails the test by the timeout, never hangs it)
    loader = DataLoader(dataset, SequentialSampler(dataset, batch_size=4), transform=smoothing,
                        num_workers=2, timeout=60)
    opt, ref_opt = optim.SGD(net.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    gm = GradManager().attach(net.parameters())
    starts = []
    for (x, y), start in zip(loader, (0, 4)):
        with gm:
            loss = F.nn.cross_entropy(net(mge.tensor(x)), mge.tensor(y))
            gm.backward(loss)
        opt.step().clear_grad()
        with torch.no_grad():
            smooth = blur(_tensor(images[start:start + 4]))
        ref_opt.zero_grad()
        ref_loss = tF.cross_entropy(ref(smooth), _tensor(labels[start:start + 4], torch.int64))
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(loss.numpy(), torch_host(ref_loss), rtol=RTOL)
        starts.append(start)
    assert starts == [0, 4]
    _assert_torch_states_equal(net.backbone.torch_module, ref[0])
