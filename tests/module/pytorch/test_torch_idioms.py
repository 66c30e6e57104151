"""PyTorchModule with modules written the way real torch code is (hooks, custom autograd
Functions, parts computed without a graph, gradients accumulated over micro-batches, frozen and
unused parameters, embeddings that write their weight, other dtypes and layouts, attention, RNNs,
compiled and traced modules), each trained inside a megengine network against the same network
trained in pure torch."""
import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as tF

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.module.pytorch import PyTorchModule, _flat_rnn
from devices import (CUDNN_RNN_EVAL_BACKWARD, address, cudnn_runs_torch_rnns, torch_device,
                     torch_host)

OPTIMIZERS = {
    "sgd momentum": (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
                     lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    "adam": (lambda ps: optim.Adam(ps, lr=0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
}


class _Net(M.Module):
    """A megengine network around the wrapped module: the means of its float outputs squared,
    summed and scaled by a megengine Parameter."""

    def __init__(self, tmod, output_cnt):
        super().__init__()
        self.wrap = PyTorchModule(tmod, output_cnt=output_cnt)
        self.scale = mge.Parameter(np.float32(1.5))

    def forward(self, *inputs):
        return self.scale * _mean_of_squares(_tensors(self.wrap(*inputs)))


def _tensors(out):
    """The floating-point tensors of a (nested) output, in order."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return _tensors(list(out.values()))
    return [out] if np.issubdtype(np.dtype(out.dtype), np.floating) else []


def _mean_of_squares(outs):
    # float16 outputs squared and averaged in float32, as `_torch_loss` does
    return sum(F.mean((o.astype("float32") if o.dtype == np.float16 else o) ** 2) for o in outs)


def _torch_loss(out, scale):
    outs = []

    def walk(o):
        if isinstance(o, (tuple, list)):
            for v in o:
                walk(v)
        elif isinstance(o, dict):
            walk(list(o.values()))
        elif o.is_floating_point():
            outs.append(o.float() if o.dtype == torch.float16 else o)

    walk(out)
    return scale * sum((o ** 2).mean() for o in outs)


def _train_like_torch(make, batches, optimizer="sgd momentum", mode="train", output_cnt=1,
                      rtol=1e-5, atol=1e-6, reference=None):
    """Train ``make()`` wrapped in `_Net` and a copy in pure torch on the same batches (numpy
    arrays; float ones get gradients on both sides, their megengine twins attached) and compare
    losses, input gradients, and every parameter and buffer after the steps. Torch draws the
    same random numbers on both sides (dropout)."""
    torch.manual_seed(0)
    tmod = make()
    if reference is None:
        ref = copy.deepcopy(tmod).to(torch_device())
    else:  # modules deepcopy cannot copy whole: made again from the seed
        torch.manual_seed(0)
        ref = reference().to(torch_device())
    net = _Net(tmod, output_cnt)
    net.train(mode == "train")
    ref.train(mode == "train")
    ref_scale = torch.tensor(1.5, requires_grad=True, device=torch_device())
    make_opt, make_ref_opt = OPTIMIZERS[optimizer]
    opt = make_opt(net.parameters())
    ref_opt = make_ref_opt([ref_scale, *ref.parameters()])
    gm = GradManager().attach(net.parameters())
    for step, batch in enumerate(batches):
        inputs = [mge.tensor(a, dtype=a.dtype) for a in batch]
        floats = [x for x in inputs if np.issubdtype(np.dtype(x.dtype), np.floating)]
        gm.attach(floats)
        torch.manual_seed(100 + step)
        with gm:
            loss = net(*inputs)
            gm.backward(loss)
        opt.step().clear_grad()
        ref_inputs = [torch.tensor(a, device=torch_device()) for a in batch]
        for t in ref_inputs:
            t.requires_grad_(t.is_floating_point())
        torch.manual_seed(100 + step)
        ref_opt.zero_grad()
        ref_loss = _torch_loss(ref(*ref_inputs), ref_scale)
        ref_loss.backward()
        ref_opt.step()
        np.testing.assert_allclose(loss.numpy(), torch_host(ref_loss), rtol=rtol, atol=atol,
                                   err_msg=f"loss of step {step}")
        for x, t in zip(floats, [t for t in ref_inputs if t.is_floating_point()]):
            if t.grad is None:
                assert x.grad is None or not np.any(x.grad.numpy())
            else:
                np.testing.assert_allclose(x.grad.numpy(), torch_host(t.grad), rtol=rtol * 10,
                                           atol=atol * 10, err_msg=f"input gradient of step {step}")
    state = tmod.state_dict()
    for name, value in ref.state_dict().items():
        assert np.all(np.isfinite(torch_host(value))), name  # (inf equals inf)
        np.testing.assert_allclose(torch_host(state[name]), torch_host(value), rtol=rtol * 10,
                                   atol=atol * 10, err_msg=name)
    np.testing.assert_allclose(net.scale.numpy(), torch_host(ref_scale), rtol=rtol * 10)
    return net


def _batches(*shapes, steps=3, seed=0):
    rng = np.random.RandomState(seed)
    return [[rng.randn(*s).astype("float32") for s in shapes] for _ in range(steps)]


# ----- hooks and custom autograd -----

def _count_call(module, args):
    module.calls += 1  # in place: a buffer torch writes in forward


class _Hooked(nn.Module):
    """Forward pre-hooks and hooks that change values, a hook counting calls in a buffer, and
    backward hooks that scale gradients, on submodules and on the module itself."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)
        self.b.register_buffer("calls", torch.zeros(()))
        self.a.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
        self.a.register_forward_hook(lambda m, args, out: torch.relu(out) + 0.1)
        self.b.register_forward_pre_hook(_count_call)
        self.b.register_full_backward_pre_hook(lambda m, grad_out: (grad_out[0] * 0.5,))
        self.a.register_full_backward_hook(
            lambda m, grad_in, grad_out: (grad_in[0] * 3,))
        self.register_full_backward_hook(lambda m, grad_in, grad_out: (grad_in[0] * -1,))

    def forward(self, x):
        return self.b(self.a(torch.tanh(x)))


class _Squared(torch.autograd.Function):
    """(x @ w.T) ** 2 and a mask that is not differentiable, with a hand-written backward."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        y = x @ w.t()
        mask = y > 0
        ctx.mark_non_differentiable(mask)
        return y ** 2, mask

    @staticmethod
    def backward(ctx, grad, _):
        x, w = ctx.saved_tensors
        grad_y = 2 * (x @ w.t()) * grad
        return (grad_y @ w if ctx.needs_input_grad[0] else None), grad_y.t() @ x


class _OwnFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4) * 0.3)

    def forward(self, x):
        y, mask = _Squared.apply(x, self.w)
        return y * mask


class _ClippedGradients(nn.Module):
    """Gradient clipping by tensor hooks on the parameters, as some training code does it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)
        for p in self.parameters():
            p.register_hook(lambda grad: grad.clamp(-0.05, 0.05))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x * 5)))


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("make", [_Hooked, _ClippedGradients, _OwnFunction],
                         ids=["module hooks", "tensor hooks", "autograd.Function"])
def test_hooks_and_own_autograd_functions_train_like_torch(make, optimizer):
    # (torch's deepcopy leaves tensor hooks behind: the reference is made again)
    net = _train_like_torch(make, _batches((5, 4)), optimizer, reference=make)
    if make is _Hooked:
        assert net.wrap.b.calls.numpy() == 3  # the hook's buffer write reached megengine's mirror


class _HooksItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        x.register_hook(lambda grad: grad * 3)
        return self.fc(torch.tanh(x))


def test_a_hook_on_an_input_scales_only_the_gradient_through_the_wrapped_module():
    """A documented limit: in torch the hook gets the input's whole gradient, the residual's
    part included; the wrapper's torch side only ever has the part through the module, so the
    oracle is torch with the module called on a tensor of its own (``x * 1``)."""
    torch.manual_seed(0)
    tmod = _HooksItsInput().to(torch_device())
    twin = copy.deepcopy(tmod)
    wrap = PyTorchModule(tmod)
    data = np.random.RandomState(0).randn(2, 3).astype("float32")
    for _ in range(2):  # the first call (on a copy, while learning) and a later one (a view)
        x = mge.Parameter(data)
        gm = GradManager().attach([x])
        with gm:
            gm.backward(((x + wrap(x)) ** 2).sum())
        tx = torch.tensor(data, device=torch_device(), requires_grad=True)
        ((tx + twin(tx * 1)) ** 2).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), torch_host(tx.grad), rtol=1e-5, atol=1e-6)


def test_hooks_on_gradient_accumulation_are_refused_as_they_would_never_run():
    """Before: wrapped, they silently never ran (torch's .grad is not where gradients go)."""
    tmod = nn.Sequential(nn.Linear(2, 2))
    tmod[0].weight.register_post_accumulate_grad_hook(lambda p: None)
    with pytest.raises(ValueError, match=r"\['0.weight'\] have hooks that run after torch "
                                         r"accumulates.*register_hook.*callbacks"):
        PyTorchModule(tmod)


class _PartlyUntracked(nn.Module):
    """A target computed without a graph by one of torch's three ways, next to a tracked use of
    the same layer."""

    def __init__(self, how):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)
        self.how = how

    def forward(self, x):
        if self.how == "detach":
            target = self.a(x).detach()
        else:
            with getattr(torch, self.how)():
                target = self.a(x)
            target = target.clone()  # (an inference tensor cannot be saved for backward)
        return self.b(torch.tanh(self.a(x)) - target)


@pytest.mark.parametrize("how", ["no_grad", "inference_mode", "detach"])
def test_parts_computed_without_a_graph_inside_forward_train_like_torch(how):
    _train_like_torch(lambda: _PartlyUntracked(how), _batches((5, 4)))


class _WithAuxiliaryLoss(nn.Module):
    """A mixture-of-experts style module returning its load-balancing loss next to its output
    (kept in an attribute instead, megengine could not differentiate it)."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(4, 2)
        self.experts = nn.ModuleList([nn.Linear(4, 3) for _ in range(2)])

    def forward(self, x):
        weights = torch.softmax(self.gate(x), dim=-1)
        y = sum(weights[:, i:i + 1] * expert(x) for i, expert in enumerate(self.experts))
        return y, (weights.mean(0) ** 2).sum() * 2


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_an_auxiliary_loss_returned_as_an_output_trains_like_torch(optimizer):
    _train_like_torch(_WithAuxiliaryLoss, _batches((5, 4)), optimizer, output_cnt=2)


def test_an_auxiliary_loss_kept_in_an_attribute_is_refused_with_the_fix():
    # torch's own error ("Can't call numpy() on Tensor that requires grad. Use
    # tensor.detach()...") pointed to a detach that would drop the loss's gradient silently
    class Kept(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _WithAuxiliaryLoss()

        def forward(self, x):
            y, self.aux_loss = self.inner(x)
            return y

    tmod = Kept()
    wrap = PyTorchModule(tmod)
    gm = GradManager().attach(wrap.parameters())
    x = mge.tensor(np.ones((5, 4), np.float32))
    with gm:
        loss = wrap(x).sum()
        for use in (lambda: loss + tmod.aux_loss, lambda: mge.tensor(tmod.aux_loss),
                    lambda: F.add(loss, tmod.aux_loss)):
            with pytest.raises(TypeError, match="return it as one more output of the "
                                                "PyTorchModule"):
                use()
        gm.backward(loss + tmod.aux_loss.item())  # its value alone: allowed


# ----- gradient accumulation -----

@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_gradients_accumulated_over_micro_batches_train_like_torch(optimizer):
    """Three backward passes (each its own ``with gm``, dropout drawing anew) add into
    ``.grad`` before one step, as torch's backward() adds into its ``.grad``; clear_grad
    empties them as torch's zero_grad() does."""
    torch.manual_seed(0)
    tmod = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Linear(4, 3)).to(torch_device())
    ref = copy.deepcopy(tmod)
    wrap = PyTorchModule(tmod)
    make_opt, make_ref_opt = OPTIMIZERS[optimizer]
    opt, ref_opt = make_opt(wrap.parameters()), make_ref_opt(ref.parameters())
    gm = GradManager().attach(wrap.parameters())
    rng = np.random.RandomState(0)
    for step in range(2):
        for micro in range(3):
            x = rng.randn(5, 4).astype("float32")
            torch.manual_seed(10 * step + micro)
            with gm:
                gm.backward((wrap(mge.tensor(x)) ** 2).mean() / 3)
            torch.manual_seed(10 * step + micro)
            ((ref(torch.tensor(x, device=torch_device())) ** 2).mean() / 3).backward()
        for name, p in ref.named_parameters():
            np.testing.assert_allclose(wrap.get_param_by_name(name).grad.numpy(),
                                       torch_host(p.grad), rtol=1e-5, atol=1e-7, err_msg=name)
        opt.step().clear_grad()
        ref_opt.step()
        ref_opt.zero_grad()
        assert all(p.grad is None for p in wrap.parameters())
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(wrap.get_param_by_name(name).numpy(), torch_host(p),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


# ----- frozen, unused and tied parameters -----

class _PartlyFrozen(nn.Module):
    """A frozen submodule, a frozen weight next to its trainable bias, and a head (a parameter
    and a layer) that forward uses on every other call only: its gradient is None then."""

    def __init__(self):
        super().__init__()
        self.backbone, self.b, self.alt = nn.Linear(4, 4), nn.Linear(4, 3), nn.Linear(4, 3)
        self.backbone.requires_grad_(False)
        self.b.weight.requires_grad_(False)
        self.gate = nn.Parameter(torch.randn(3))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.b(torch.tanh(self.backbone(x)))
        return h + self.alt(x) * self.gate if self.calls % 2 == 0 else h


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_frozen_and_sometimes_unused_parameters_train_like_torch(optimizer):
    net = _train_like_torch(_PartlyFrozen, _batches((5, 4), steps=5), optimizer)
    assert net.wrap.get_param_by_name("b.weight").grad is None


def test_a_submodule_unfrozen_during_training_trains_like_torch():
    torch.manual_seed(0)
    tmod = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
    tmod[0].requires_grad_(False)
    ref = copy.deepcopy(tmod).to(torch_device())
    wrap = PyTorchModule(tmod)
    first = torch_host(tmod[0].weight).copy()
    opt = optim.SGD(wrap.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    gm = GradManager().attach(wrap.parameters())
    for step, (x,) in enumerate(_batches((5, 4), steps=4)):
        if step == 2:
            tmod[0].requires_grad_(True)
            ref[0].requires_grad_(True)
        with gm:
            gm.backward(F.sum(wrap(mge.tensor(x)) ** 2))
        opt.step().clear_grad()
        ref_opt.zero_grad()
        (ref(torch.tensor(x, device=torch_device())) ** 2).sum().backward()
        ref_opt.step()
    for name, value in ref.state_dict().items():
        np.testing.assert_allclose(torch_host(tmod.state_dict()[name]), torch_host(value),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    assert not np.allclose(torch_host(tmod[0].weight), first)  # trained after unfreezing


class _Lookup(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.emb = nn.Embedding(10, 4, **kwargs)
        with torch.no_grad():
            self.emb.weight.mul_(2)  # rows beyond max_norm, to be renormalised in forward
        self.out = nn.Linear(4, 2)

    def forward(self, idx):
        return self.out(self.emb(idx))


@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
@pytest.mark.parametrize("kwargs", [
    dict(padding_idx=0), dict(max_norm=1.0), dict(max_norm=0.5, norm_type=1.0, padding_idx=3),
    dict(sparse=True, padding_idx=0), dict(sparse=True, max_norm=1.0),
], ids=["padding_idx", "max_norm", "max_norm l1 padding_idx", "sparse padding_idx",
        "sparse max_norm"])
def test_embeddings_with_padding_and_max_norm_train_like_torch(kwargs, index_dtype):
    """max_norm renormalises the looked-up rows of the weight in place in forward; megengine
    sees it through the shared memory. (SGD: torch's Adam refuses sparse gradients.)"""
    rng = np.random.RandomState(0)
    batches = [[rng.randint(0, 10, size=(3, 5)).astype(index_dtype)] for _ in range(3)]
    _train_like_torch(lambda: _Lookup(**kwargs), batches)


class _TiedLookup(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4, max_norm=0.5)
        with torch.no_grad():
            self.emb.weight.mul_(3)

    def forward(self, idx):
        return self.emb(idx)


@pytest.mark.parametrize("h_needs_grad", [True, False])
def test_a_weight_the_torch_module_renormalises_after_a_megengine_op_used_it(h_needs_grad):
    """The tied output projection of a language model, computed by megengine before the
    embedding looks up (and renormalises) rows again: h's gradient reads the old weight, which
    torch's memory no longer holds. Torch's backward raises, and so does megengine's now;
    earlier versions of this fork computed it with the renormalised weight. The weight's own
    gradient reads only h, so without h's gradient both go on, with the same result."""
    torch.manual_seed(0)
    tmod = _TiedLookup()
    ref = copy.deepcopy(tmod).to(torch_device())
    wrap = PyTorchModule(tmod)
    h_np = np.random.RandomState(0).randn(3, 4).astype("float32")
    idx = np.array([1, 2, 2])
    h, weight = mge.tensor(h_np), wrap.get_param_by_name("emb.weight")
    gm = GradManager().attach([weight] + ([h] if h_needs_grad else []))
    ref_h = torch.tensor(h_np, device=torch_device(), requires_grad=h_needs_grad)
    ref_idx = torch.tensor(idx, device=torch_device())
    ref_loss = (ref_h @ ref.emb.weight.t()).sum() + ref(ref_idx).sum()
    with gm:
        loss = F.sum(F.matmul(h, weight, transpose_b=True)) + F.sum(wrap(mge.tensor(idx)))
        if h_needs_grad:
            with pytest.raises(RuntimeError, match="inplace operation"):
                ref_loss.backward()
            with pytest.raises(RuntimeError, match="MatMul: a value it saved for this backward "
                                                   "was changed in place.*max_norm"):
                gm.backward(loss)
            return
        gm.backward(loss)
    ref_loss.backward()
    np.testing.assert_allclose(weight.grad.numpy(), torch_host(ref.emb.weight.grad), rtol=1e-6)


# ----- dtypes, layouts and aliasing -----

def _mlp(dtype):
    return lambda: nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


@pytest.mark.parametrize("dtype, optimizer", [
    ("float64", "sgd momentum"), ("float64", "adam"),
    # (Adam's eps, 1e-8, is 0 in float16: infinite steps on both sides)
    ("float16", "sgd momentum"),
])
def test_float64_and_float16_modules_train_like_torch(dtype, optimizer):
    rtol, atol = (1e-10, 1e-12) if dtype == "float64" else (1e-3, 1e-3)
    batches = [[b.astype(dtype) for b in batch] for batch in _batches((5, 4))]
    _train_like_torch(_mlp(getattr(torch, dtype)), batches, optimizer, rtol=rtol, atol=atol)


class _Masked(nn.Module):
    """Integer indices and a bool mask in, a float, a bool and an integer tensor out."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(10, 4), nn.Linear(4, 2)

    def forward(self, idx, mask, x):
        h = self.out(self.emb(idx) * mask.unsqueeze(-1) + x)
        return h, h > 0, idx * 2


def test_integer_and_bool_inputs_and_outputs():
    rng = np.random.RandomState(0)
    batches = [[rng.randint(0, 10, size=(3, 5)).astype("int32"), rng.rand(3, 5) > 0.5,
                rng.randn(3, 5, 4).astype("float32")] for _ in range(3)]
    net = _train_like_torch(_Masked, batches, output_cnt=3)
    h, positive, doubled = net.wrap(*[mge.tensor(a) for a in batches[0]])
    assert positive.dtype == np.bool_ and doubled.dtype == np.int32
    np.testing.assert_array_equal(positive.numpy(), h.numpy() > 0)
    np.testing.assert_array_equal(doubled.numpy(), batches[0][0] * 2)


class _ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.sigmoid(self.bn(self.conv(x.contiguous(memory_format=torch.channels_last))))


class _Views(nn.Module):
    """Outputs that are transposes, strided slices and the input itself or views of it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.fc(x)
        return y.t(), y[:, ::2], x, x.view(-1), x[1:].t()


@pytest.mark.parametrize("case", ["channels_last", "channels_last module", "views"])
def test_channels_last_and_non_contiguous_or_aliasing_outputs_train_like_torch(case):
    if case == "views":
        net = _train_like_torch(_Views, _batches((5, 4)), output_cnt=5)
        x = mge.tensor(np.ones((5, 4), "float32"))
        net.wrap(x)[2].set_value(mge.tensor(np.zeros((5, 4), "float32")))  # the input: a value
        np.testing.assert_array_equal(x.numpy(), np.ones((5, 4)))
        return
    make = _ChannelsLast if case == "channels_last" \
        else lambda: _ChannelsLast().to(memory_format=torch.channels_last)
    _train_like_torch(make, _batches((2, 3, 5, 5)), rtol=1e-4, atol=1e-5)


class _StridedParameters(nn.Module):
    """Parameters on memory laid out otherwise than contiguously: a transposed weight (as
    tied or imported weights often are) and a bias viewing every other value of its storage."""

    def __init__(self):  # (made on the wrapper's torch device: moving a module to a GPU copies
        super().__init__()  # the every-other-value bias into contiguous memory)
        self.w = nn.Parameter(torch.randn(3, 4).to(torch_device()).t())
        self.b = nn.Parameter(torch.randn(6).to(torch_device())[::2])

    def forward(self, x):
        return torch.tanh(x @ self.w) + self.b


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_non_contiguous_parameters_train_in_place_like_torch(optimizer):
    net = _train_like_torch(_StridedParameters, _batches((5, 4)), optimizer)
    tmod = net.wrap.torch_module
    assert tmod.w.stride() == (1, 4) and tmod.b.stride() == (2,)  # updated in place


# ----- attention, transformers, RNNs, batch norm -----

_PADDING = np.array([[False] * 5, [False, False, False, True, True]])


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, dropout=0.2, batch_first=True)

    def forward(self, x, padding):
        return self.attn(x, x, x, key_padding_mask=padding)


class _Encoder(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True, **kwargs)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8))

    def forward(self, x, padding):
        return self.encoder(x, src_key_padding_mask=padding)


class _CausalAttention(nn.Module):
    """Both masks at once, and the per-head weights returned too."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, dropout=0.2, batch_first=True)

    def forward(self, x, padding):
        causal = torch.triu(torch.ones(5, 5, dtype=torch.bool, device=x.device), 1)
        return self.attn(x, x, x, key_padding_mask=padding, attn_mask=causal,
                         average_attn_weights=False)


class _ScaledDotProduct(nn.Module):
    """torch's fused attention function on projections, with a mask made from the padding and
    dropout while training."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x, padding):
        q, k, v = (t.unflatten(-1, (2, 4)).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        out = tF.scaled_dot_product_attention(
            q, k, v, attn_mask=~padding[:, None, None, :], dropout_p=0.1 if self.training else 0.0)
        return out.transpose(1, 2).flatten(2)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning")
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("make", [_Attention, _CausalAttention, _ScaledDotProduct, _Encoder,
                                  lambda: _Encoder(norm_first=True)],
                         ids=["MultiheadAttention", "causal_and_padding_masks",
                              "scaled_dot_product_attention", "TransformerEncoder", "norm_first"])
def test_attention_and_transformer_layers_train_like_torch(make, mode):
    """(SGD: attention's key bias has a zero gradient, whose rounding noise Adam would scale up
    to full steps on either side.)"""
    batches = [[x, _PADDING] for x, in _batches((2, 5, 8))]
    _train_like_torch(make, batches, mode=mode, output_cnt=None, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning")
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype:UserWarning")
def test_transformer_encoder_fast_path_in_eval_inference_matches_torch():
    """Without gradients in eval mode torch runs its fused fast path (and with a padding mask
    nested tensors); the wrapper's call is such a call too."""
    torch.manual_seed(0)
    tmod = _Encoder().eval()
    wrap = PyTorchModule(tmod)
    x = np.random.RandomState(0).randn(2, 5, 8).astype("float32")
    with torch.no_grad():
        expected = tmod(torch.tensor(x, device=torch_device()),
                        torch.tensor(_PADDING, device=torch_device()))
    got = wrap(mge.tensor(x), mge.tensor(_PADDING))
    np.testing.assert_allclose(got.numpy(), torch_host(expected), rtol=1e-6, atol=1e-6)


class _Recurrent(nn.Module):
    """An RNN as real code calls it: flatten_parameters() first (a no-op on the CPU)."""

    def __init__(self, cls, **kwargs):
        super().__init__()
        self.rnn = cls(4, 3, num_layers=2, batch_first=True, **kwargs)

    def forward(self, x):
        self.rnn.flatten_parameters()
        return self.rnn(x)


class _Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 3, batch_first=True)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, h = self.rnn(packed)
        padded = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return padded[0], h


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("make", [
    lambda: _Recurrent(nn.LSTM, bidirectional=True, dropout=0.3),
    lambda: _Recurrent(nn.GRU), lambda: _Recurrent(nn.RNN, nonlinearity="relu"),
    lambda: _Recurrent(nn.LSTM, proj_size=2), _Packed,
], ids=["LSTM bidirectional dropout", "GRU", "RNN relu", "LSTM proj_size", "GRU packed"])
def test_rnns_train_like_torch(make, mode):
    batches = [[x] for x, in _batches((2, 5, 4))]
    if make is _Packed:
        batches = [[x, np.array([5, 3], "int64")] for x, in batches]
    if mode == "eval" and cudnn_runs_torch_rnns():
        # torch on a GPU gives no gradients of cuDNN's RNN kernels in eval mode, and neither
        # does the wrapper, which runs torch's; with cuDNN off (what a torch user does for
        # them) both train alike
        with pytest.raises(RuntimeError, match=CUDNN_RNN_EVAL_BACKWARD):
            _train_like_torch(make, batches[:1], mode=mode, output_cnt=None)
        ref = make().to(torch_device())
        ref.eval()
        out = ref(*[torch.tensor(a, device=torch_device()) for a in batches[0]])
        with pytest.raises(RuntimeError, match=CUDNN_RNN_EVAL_BACKWARD):
            _torch_loss(out, torch.tensor(1.5, device=torch_device())).backward()
        enabled = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = False
        try:
            _train_like_torch(make, batches, mode=mode, output_cnt=None, rtol=1e-4, atol=1e-5)
        finally:
            torch.backends.cudnn.enabled = enabled
        return
    _train_like_torch(make, batches, mode=mode, output_cnt=None, rtol=1e-4, atol=1e-5)


def _flatten_into_new_memory(rnn):
    """What flatten_parameters() does on a GPU (a new flat buffer for cuDNN, every weight set_
    to view it, on every call), on the CPU."""
    with torch.no_grad():
        flat = torch.cat([w.reshape(-1) for w in rnn._flat_weights])
        offset = 0
        for w in rnn._flat_weights:
            w.set_(flat.untyped_storage(), offset, w.shape)
            offset += w.numel()


def test_an_rnn_flattening_its_weights_in_forward_trains_like_torch_in_the_shared_memory(
        monkeypatch):
    """torch's flatten_parameters(), moving the weights as on a GPU: the wrapper flattens its
    RNNs once, when it is built, and their flatten_parameters() in forward then leaves the
    weights megengine shares where they are (earlier versions of this fork raised on a GPU)."""
    flattened = []

    def flatten_as_on_a_gpu(rnn):
        flattened.append(rnn)
        _flatten_into_new_memory(rnn)

    monkeypatch.setattr(_flat_rnn, "_torch_flatten", flatten_as_on_a_gpu)
    net = _train_like_torch(lambda: _Recurrent(nn.LSTM, bidirectional=True), _batches((2, 5, 4)),
                            output_cnt=None, rtol=1e-4, atol=1e-5)
    rnn = net.wrap.torch_module.rnn
    assert sum(r is not rnn for r in flattened) >= 3, "torch's own twin: on each of its calls"
    when_built = sum(r is rnn for r in flattened)  # (made, moved by .to(), then the wrapper's)
    for name, w in rnn.named_parameters():
        assert w.data_ptr() == address(net.wrap.get_param_by_name("rnn." + name)), name
    rnn.flatten_parameters()  # also called from outside
    assert rnn.weight_ih_l0.data_ptr() == address(net.wrap.rnn.weight_ih_l0)
    twin = PyTorchModule(net.wrap.torch_module, output_cnt=None)  # a second wrapper of it
    assert rnn.weight_ih_l0.data_ptr() == address(twin.rnn.weight_ih_l0)
    net.wrap(mge.tensor(np.zeros((2, 5, 4), "float32")))  # (the first one still runs)
    assert sum(r is rnn for r in flattened) == when_built, "none since the wrapper was built"


def test_an_rnn_whose_weights_an_override_of_flatten_parameters_moved_is_named_with_the_fix(
        monkeypatch):
    """A subclass's own flatten_parameters() moving the weights (here the GPU's way, on the
    CPU) is not torch's, which the wrapper keeps from moving them: the call names the weight."""
    monkeypatch.setattr(nn.LSTM, "flatten_parameters", _flatten_into_new_memory)
    wrap = PyTorchModule(_Recurrent(nn.LSTM), output_cnt=None)
    x = mge.tensor(np.zeros((2, 5, 4), "float32"))
    moved = ("weight 'weight_ih_l0' of torch LSTM moved to new memory.*override of it"
             ".*Flatten the weights once.*before wrapping")
    with pytest.raises(RuntimeError, match=moved):
        wrap(x)  # caught at the end of the call that moved them
    rnn = wrap.torch_module.rnn
    assert rnn.weight_ih_l0.data_ptr() == address(wrap.rnn.weight_ih_l0)  # (put back)


@pytest.mark.parametrize("momentum", [None, 0.3])
def test_batch_norm_with_a_cumulative_average_trains_like_torch(momentum):
    """momentum=None: the running statistics are averages over all batches, counted in
    num_batches_tracked (an int64 buffer)."""
    make = lambda: nn.Sequential(nn.BatchNorm1d(3, momentum=momentum), nn.Sigmoid())
    net = _train_like_torch(make, _batches((6, 3), steps=4))
    assert net.wrap.state_dict()["0.num_batches_tracked"].item() == 4


# ----- compiled and traced modules -----

class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

    def forward(self, x):
        return torch.tanh(self.bn(self.fc(x)))


def _compiled():
    # aot_eager: torch.compile's graph capture (dynamo) and its autograd (AOTAutograd) without
    # inductor's C++ code generation, which takes seconds per graph on these machines
    return torch.compile(_Block(), backend="aot_eager")


def _traced():
    return torch.jit.trace(_Block(), torch.randn(3, 4))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("make", [_compiled, _traced], ids=["torch.compile", "torch.jit.trace"])
def test_compiled_and_traced_modules_train_like_torch(make):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make()(torch.randn(3, 4))
    except Exception as e:  # no compiler, a Python torch.compile does not support yet
        pytest.skip(f"{make.__name__} does not work here: {type(e).__name__}: {e}")
    # the reference is made the same way: tracing runs forward once, moving batch norm's stats
    _train_like_torch(make, _batches((5, 4)), reference=make if make is _traced else None)


# ----- dtypes megengine cannot hold -----

class _ComplexCache(nn.Module):
    def __init__(self, persistent):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.register_buffer("phase", torch.ones(2, dtype=torch.complex64), persistent=persistent)

    def forward(self, x):
        return self.fc(x) * self.phase.real


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature:UserWarning")
def test_bfloat16_and_complex_parameters_are_refused_naming_them_and_the_fix():
    """Before: wrapping a bfloat16 module raised the bridge's 'torch.bfloat16 has no numpy
    dtype' without naming a tensor, and a complex buffer 'complex64 is not supported'."""
    with pytest.raises(TypeError, match=r"\{'0.weight': 'bfloat16', '0.bias': 'bfloat16'\}.*"
                                        r"module.float\(\).*low_prec_dtype='bfloat16'"):
        PyTorchModule(nn.Sequential(nn.Linear(3, 2)).to(torch.bfloat16))
    with pytest.raises(TypeError, match=r"\{'phase': 'complex64'\}.*view_as_real"):
        PyTorchModule(_ComplexCache(persistent=True))
    tmod = _ComplexCache(persistent=False)  # a cache megengine neither trains nor saves: fine
    x = np.ones((1, 2), "float32")
    np.testing.assert_allclose(PyTorchModule(tmod)(mge.tensor(x)).numpy(),
                               torch_host(tmod(torch.tensor(x, device=torch_device()))))
