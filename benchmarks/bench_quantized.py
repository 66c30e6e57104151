"""Quantized inference's cost: a small CNN's forward pass as the integer network ``quantize``
makes (int8 weights and activations, int32 accumulation emulated exactly in float64 on ATen)
against the same network in float and as the QAT network in evaluation (fake quantization in
float), and against PyTorch's float and int8 (``torch.ao.quantization`` eager, x86 backend)
forwards of the same shape.

What it prints: ms per forward pass (median over repeats, the variants taking turns call by
call) and the ratios quantized / float and quantized / QAT within megengine, and megengine
quantized / torch int8. The network is bench_qat.py's (conv-bn-relu, conv-relu, linear, batch 32
of 1x16x16 inputs). The emulation is a reference for checking a deployed model, not a speed-up:
the figures say what it costs.

Then the quantized Linear alone (the network's fc, and a 512 -> 256 layer), as it runs (upstream's
MatrixMul, bias ADD and TypeCvt) against the same integers through the exact ConvBias kernel as a
1x1 convolution (what it ran before): checked equal, then ms per call and the ratio.

    python benchmarks/bench_quantized.py [--steps N] [--repeats R] [--quick]
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load: one thread each

import sys  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import megengine as mge  # noqa: E402
import megengine.functional as F  # noqa: E402
import megengine.module as M  # noqa: E402
from megengine.core.tensor import dtype  # noqa: E402
from megengine.quantization import ema_fakequant_qconfig, quantize, quantize_qat  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402
from bench_qat import BATCH, SIZE, Net, TorchNet  # noqa: E402


def _torch_int8(calibration):
    # torch 2.x deprecates its eager quantization API (it still runs): keep the output readable
    warnings.filterwarnings("ignore", module=r"torch\.ao\..*")
    warnings.filterwarnings("ignore", message=r".*(deprecated|torchao).*")
    net = TorchNet().eval()
    torch.ao.quantization.fuse_modules(net, [["conv1.0", "conv1.1", "conv1.2"],
                                             ["conv2.0", "conv2.1"]], inplace=True)
    net.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    torch.ao.quantization.prepare(net, inplace=True)
    net(calibration)
    return torch.ao.quantization.convert(net)


def main():
    args = _timing.parse_args(__doc__, steps=30, repeats=5, quick_steps=3, quick_repeats=1)
    torch.set_num_threads(1)
    x_np = np.random.RandomState(0).randn(BATCH, 1, SIZE, SIZE).astype(np.float32)
    x, tx = mge.tensor(x_np), torch.tensor(x_np)
    float_net = Net()
    float_net.eval()
    qat_net = quantize_qat(Net(), qconfig=ema_fakequant_qconfig)
    qat_net(x)  # calibrate the observers once
    qat_net.eval()
    q_net = quantize(qat_net, inplace=False)
    q_net.eval()  # (new layers start in training mode, as upstream's)
    # the same work: the integer network computes what the QAT network does
    step = float(qat_net.fc.act_observer.get_qparams().scale.numpy())
    diff = np.abs(q_net(x).numpy() - qat_net(x).numpy()).max()
    print(_timing.machine_line())
    print(f"quantized vs QAT outputs: largest difference {diff:.3g} "
          f"({diff / step:.2f} output steps) {'ok' if diff <= step * 1.001 else 'MISMATCH'}")
    torch_float, torch_int8 = TorchNet().eval(), _torch_int8(tx)
    variants = {
        "megengine float": lambda: float_net(x),
        "megengine QAT eval": lambda: qat_net(x),
        "megengine quantized": lambda: q_net(x),
        "torch float": lambda: torch_float(tx),
        "torch int8": lambda: torch_int8(tx),
    }
    with torch.no_grad():
        t = _timing.time_steps(variants, args.steps, args.repeats)
    for name, timing in t.items():
        print(f"{name:20s} {timing.median:8.3f} ms/forward (best {timing.best:.3f})")
    q = t["megengine quantized"].median
    print(f"megengine quantized / float {q / t['megengine float'].median:.2f}x, "
          f"/ QAT eval {q / t['megengine QAT eval'].median:.2f}x; "
          f"megengine quantized / torch int8 {q / t['torch int8'].median:.2f}x")

    linears = {"fc": (q_net.fc, q_net.fc.weight.shape[1]), "512->256": (_q_linear(512, 256), 512)}
    for name, (fc, n_in) in linears.items():
        _linear_against_conv_bias(name, fc, n_in, args)


def _q_linear(n_in, n_out):
    """A quantized Linear(n_in, n_out) calibrated on random data."""
    net = quantize_qat(M.Sequential(M.QuantStub(), M.Linear(n_in, n_out)),
                       qconfig=ema_fakequant_qconfig)
    net(mge.tensor(np.random.RandomState(1).randn(BATCH, n_in).astype(np.float32)))
    net.eval()
    q_net = quantize(net, inplace=False)
    q_net.eval()  # (new layers start in training mode, as upstream's)
    return q_net[1]


def _linear_against_conv_bias(name, fc, n_in, args):
    ints = np.random.RandomState(2).randint(-100, 100, (BATCH, n_in)).astype(np.int8)
    x = mge.tensor(ints, dtype=dtype.qint8(0.05))
    scale = float(np.float32(0.05) * np.float32(dtype.get_scale(fc.weight.dtype)))
    w = fc.weight.reshape(*fc.weight.shape, 1, 1)
    b = fc.bias.astype(dtype.qint32(scale)).reshape(1, -1, 1, 1)

    def conv_bias():
        out = F.quantized.conv_bias_activation(x.reshape(BATCH, n_in, 1, 1), w, b,
                                               dtype=fc.output_dtype)
        return out.reshape(BATCH, -1)

    same = np.array_equal(fc(x).numpy(), conv_bias().numpy())
    t = _timing.time_steps({"linear": lambda: fc(x), "conv_bias": conv_bias}, args.steps,
                           args.repeats)
    print(f"quantized Linear {name} (batch {BATCH}): MatrixMul+ADD+TypeCvt "
          f"{t['linear'].median:.3f} ms, ConvBias 1x1 {t['conv_bias'].median:.3f} ms, ratio "
          f"{t['linear'].median / t['conv_bias'].median:.2f}x "
          f"({'same integers' if same else 'MISMATCH'})")


if __name__ == "__main__":
    main()
