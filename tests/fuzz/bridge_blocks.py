"""The torch blocks of the bridge fuzzer (`bridge.py`), at module level so that whole networks
pickle: each is one small case the bridge must carry (ties, frozen parameters, several outputs,
strided outputs, packed and non-tensor arguments, integer indices, modes, images)."""
import torch
import torch.nn as nn
import torch.nn.functional as tF


class Mlp(nn.Module):
    def __init__(self, d_in, d_out, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(d_in, d_out), nn.Linear(d_out, d_out), act

    def forward(self, x):
        return self.fc2(getattr(torch, self.act)(self.fc1(x)))


class BnBlock(nn.Module):
    """tanh before the batch norm: a bias straight before it would get a gradient that is zero
    up to rounding, which Adam turns into steps of +-lr that differ from side to side."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc, self.bn = nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out)

    def forward(self, x):
        return self.bn(torch.tanh(self.fc(x)))


class LnResidual(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln, self.fc = nn.LayerNorm(d), nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(self.ln(x))


class Tied(nn.Module):
    """``dec.weight is enc.weight``: one parameter, two uses."""

    def __init__(self, d):
        super().__init__()
        self.enc, self.dec = nn.Linear(d, d), nn.Linear(d, d)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


class Frozen(nn.Module):
    """A frozen weight and a trainable bias and scale."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.fc.weight.requires_grad_(False)
        self.scale = nn.Parameter(torch.rand(d_out) + 0.5)

    def forward(self, x):
        return self.fc(x) * self.scale


class TwoOut(nn.Module):
    """Two outputs in a tuple, list or dict; the caller adds them."""

    def __init__(self, d, container):
        super().__init__()
        self.fc, self.gate = nn.Linear(d, d), nn.Parameter(torch.randn(d))
        self.container = container

    def forward(self, x):
        a, b = self.fc(x), torch.sigmoid(x * self.gate)
        return {"tuple": (a, b), "list": [a, b], "dict": {"a": a, "b": b}}[self.container]


class Transposed(nn.Module):
    """Returns a transposed view (non-contiguous); the caller transposes back."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.fc(x).t()


class Packed(nn.Module):
    """Tensors inside a list or dict argument and a keyword tensor and float."""

    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, pair, *, shift, scale):
        x, y = (pair["x"], pair["y"]) if isinstance(pair, dict) else pair
        return self.fc(x) * scale + torch.tanh(y) + shift


class Embed(nn.Module):
    """An embedding of int32 indices (computed on the caller's side) added to ``x``."""

    def __init__(self, d, vocab):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)

    def forward(self, x, idx):
        return x + self.emb(idx).sum(1)


class Masked(nn.Module):
    """A non-persistent buffer (not in the state dict, nor in megengine's view) and non-tensor
    arguments: the activation's name and a power."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.register_buffer("mask", (torch.rand(d_out) > 0.3).double(), persistent=False)

    def forward(self, x, act, power):
        return getattr(torch, act)(self.fc(x) * self.mask) ** power


class Modal(nn.Module):
    """Train and eval run different code: a dropout of p=0 in training, a damped residual in
    eval."""

    def __init__(self, d):
        super().__init__()
        self.fc, self.drop = nn.Linear(d, d), nn.Dropout(p=0.0)

    def forward(self, x):
        return self.drop(torch.tanh(self.fc(x))) if self.training else 0.5 * x + self.fc(x)


class ConvBlock(nn.Module):
    """Conv2d (+ BatchNorm2d) + tanh + pooling on (N, C, H, W); the output contiguous,
    channels-last, or permuted to (N, H, W, C) (the caller permutes back). No convolution bias
    before a batch norm: its gradient would be zero up to rounding (see BnBlock)."""

    def __init__(self, c_in, c_out, bn, pool, layout):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not bn)
        self.bn = nn.BatchNorm2d(c_out) if bn else nn.Identity()
        self.pool, self.layout = pool, layout

    def forward(self, x):
        y = torch.tanh(self.bn(self.conv(x)))
        y = {"max": tF.max_pool2d, "avg": tF.avg_pool2d}[self.pool](y, 2) if self.pool else y
        if self.layout == "channels_last":
            return y.contiguous(memory_format=torch.channels_last)
        return y.permute(0, 2, 3, 1) if self.layout == "nhwc" else y


class Recurrent(nn.Module):
    """A recurrent layer (``nn.LSTM`` or ``nn.GRU``, one or two layers, one or two directions)
    over the features read as a sequence of ``d`` steps of one value (batch first); its output
    sequence (a Linear to ``out``) and its final hidden state (inside the tuple an LSTM
    returns) summed."""

    def __init__(self, d, out, cell, layers, bidirectional):
        super().__init__()
        self.rnn = getattr(nn, cell)(1, 3, num_layers=layers, bidirectional=bidirectional,
                                     batch_first=True)
        self.fc = nn.Linear(d * 3 * (2 if bidirectional else 1), out)

    def forward(self, x):
        y, state = self.rnn(x.unsqueeze(-1))
        h = state[0] if isinstance(state, tuple) else state
        return self.fc(y.flatten(1)) + h.sum(0).sum(-1, keepdim=True)


class Encoder(nn.Module):
    """``nn.TransformerEncoderLayer`` (post- or pre-norm, no dropout) over the features read as
    a sequence of ``d`` tokens, each embedded from its value; a Linear to ``out``. Its attention
    has no biases: the keys' bias adds one number to every score of a query, which softmax
    ignores, so its gradient is rounding noise that Adam scales to steps of its own on each side
    (networks 123826, 123869, 123900; see BnBlock)."""

    def __init__(self, d, out, norm_first):
        super().__init__()
        self.emb = nn.Linear(1, 4)
        self.layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.0,
                                                batch_first=True, norm_first=norm_first)
        self.layer.self_attn = nn.MultiheadAttention(4, 2, bias=False, batch_first=True)
        self.fc = nn.Linear(4 * d, out)

    def forward(self, x):
        return self.fc(self.layer(self.emb(x.unsqueeze(-1))).flatten(1))


BLOCKS = {"mlp": Mlp, "bn": BnBlock, "ln": LnResidual, "tied": Tied, "frozen": Frozen,
          "two_out": TwoOut, "transposed": Transposed, "packed": Packed, "embed": Embed,
          "masked": Masked, "modal": Modal, "conv": ConvBlock, "recurrent": Recurrent,
          "encoder": Encoder}


