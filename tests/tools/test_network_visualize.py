"""megengine.tools.network_visualize: parameters, FLOPs and activations of a dumped program,
hand-computed for a tiny net and compared with module_stats on the eager model."""
import importlib.util

import numpy as np
import pytest

import megengine as mge
import megengine.module as M
from megengine.jit import trace
from megengine.tools import network_visualize as nv
from megengine.utils.module_stats import module_stats
from megengine.utils.network import Network

# tiny net (conftest.TinyNet), input (1, 2, 4, 4):
#   conv 2->3 3x3 pad 1, bias: 48 outputs * (2 * 9 + 1)   = 912
#   batch norm:                 7 * 48                     = 336
#   relu (elementwise):         48                         =  48
#   max pool 2x2:               12 outputs * 4             =  48
#   linear 12->5:               5 * 12 (MatrixMul) + 5 (ADD) = 65
# conv 48 outputs x 2*3*3 taps; its bias ADD (48), relu (48) and the linear bias ADD (5)
TINY_FLOPS = {"Convolution": 864, "BatchNorm": 336, "Elemwise": 48 + 48 + 5, "Pooling": 48,
              "MatrixMul": 60}
# constants: conv 3*2*3*3 + 3, bn weight/bias/mean/var 4 * 3, fc 5*12 + 5
TINY_PARAM_DIMS = 54 + 3 + 12 + 60 + 5
# first outputs of conv, its bias ADD, bn, relu (48 each), pool, reshape (12 each), MatrixMul,
# ADD (5 each)
TINY_ACT_DIMS = 4 * 48 + 2 * 12 + 2 * 5


def test_tiny_net_counts_by_hand(tiny, capsys):
    net, plain, _ = tiny
    size, flops = nv.main([plain, "--all"])
    assert flops == sum(TINY_FLOPS.values())
    assert size == TINY_PARAM_DIMS * 4  # float32
    params, rows, acts = nv.collect(Network.load(plain))
    by_type = {}
    for r in rows:
        by_type[r["class_name"]] = by_type.get(r["class_name"], 0) + r["flops_num"]
    assert by_type == TINY_FLOPS
    assert sum(r["param_dim"] for r in params) == TINY_PARAM_DIMS
    assert sum(r["act_dim"] for r in acts) == TINY_ACT_DIMS
    w = next(r for r in params if r["name"] == "conv.weight")
    want = net.conv.weight.numpy()
    assert w["shape"] == (3, 2, 3, 3) and w["mean"] == f"{want.astype(np.float64).mean():.3g}"
    out = capsys.readouterr().out
    for title in ("param stats:", "flops stats:", "activations stats:", "summary"):
        assert title in out
    assert "conv.Convolution" in out and "912.000 OPs" in out
    assert f"{sum(TINY_FLOPS.values()) / 1000:.3f} KOPs" in out  # the total row and summary


def test_tables_follow_the_switches(tiny, capsys):
    _, plain, _ = tiny
    nv.main([plain, "--log_flops", "--bar_length_max", "10"])
    out = capsys.readouterr().out
    assert "flops stats:" in out and "param stats:" not in out and "activations" not in out
    # the largest row (the convolution) has the full bar
    conv_line = next(line for line in out.splitlines() if line.startswith("conv.Convolution"))
    assert conv_line.rstrip().endswith("#" * 10)
    # the cumulative and share columns, by hand from TINY_FLOPS (1409 in all): the first row
    # 864 of them, the last (the linear's bias ADD, 5 OPs) ends the running sum at the total
    assert conv_line.split()[-3:-1] == ["OPs", "61.32%"] and "864.000 OPs  864.000 OPs" in conv_line
    last = next(line for line in out.splitlines() if line.startswith("fc.ADD"))
    assert last.split()[-2:] == ["KOPs", "0.35%"] and "1.409 KOPs" in last
    nv.main([plain])  # no switch: the summary only, as upstream
    out = capsys.readouterr().out
    assert "summary" in out and "flops stats:" not in out


class Layers(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(4, 6, 3, padding=1, groups=2)
        self.deconv = M.ConvTranspose2d(6, 4, 2, stride=2, groups=2)
        self.ln = M.LayerNorm(4)
        self.gn = M.GroupNorm(2, 4)
        self.inn = M.InstanceNorm(4)
        self.ap = M.AvgPool2d(2)
        self.aap = M.AdaptiveAvgPool2d((2, 2))
        self.conv3 = M.Conv2d(4, 2, 1, bias=False)

    def forward(self, x):
        x = self.inn(self.gn(self.ln(self.deconv(self.conv(x)))))
        return self.conv3(self.aap(self.ap(x)))


def test_layer_operators_count_as_module_stats_counts_their_layers(tmp_path):
    net = Layers()
    net.eval()
    x = np.random.RandomState(0).rand(2, 4, 4, 4).astype("float32")

    @trace(symbolic=True, capture_as_const=True)
    def fwd(data):
        return net(data)

    fwd(mge.tensor(x))
    fwd.dump(str(tmp_path / "layers.mge"), arg_names=["data"])
    _, rows, _ = nv.collect(Network.load(str(tmp_path / "layers.mge")))
    _, details = module_stats(net, inputs=[x], logging_to_stdout=False)
    want = {r["name"]: r["flops_num"] for r in details.flops if r["name"] != "total"}
    got = {}  # (a layer's operators: a convolution and its bias ADD)
    for r in rows:
        name = r["name"].split(".")[0]
        got[name] = got.get(name, 0) + r["flops_num"]
    # the adaptive pooling is dumped as a Pooling operator, whose windows are counted: 2*4*2*2
    # outputs of 2*2; module_stats counts the layer by upstream's formula, one per output
    assert got.pop("aap") == 2 * 4 * 2 * 2 * 4 and want.pop("aap") == 2 * 4 * 2 * 2
    assert got == want


def test_log_path_needs_a_tensorboard_writer(tiny, tmp_path, capsys):
    _, plain, _ = tiny
    if importlib.util.find_spec("tensorboard") is not None:
        nv.main([plain, "--log_path", str(tmp_path / "tb")])
        assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
        return
    with pytest.raises(SystemExit) as e:
        nv.main([plain, "--log_path", str(tmp_path / "tb")])
    assert e.value.code == 2
    assert "--log_path needs the tensorboard package" in capsys.readouterr().err


def test_bad_files(tmp_path, capsys):
    (tmp_path / "up.mge").write_bytes(b"\x00mgb" * 50)
    for path, message in ((tmp_path / "nope.mge", "no such model file"),
                          (tmp_path / "up.mge", "nor an upstream MegEngine .mge file"),
                          (tmp_path, "is a directory")):
        with pytest.raises(SystemExit) as e:
            nv.main([str(path), "--all"])
        assert e.value.code == 2
        assert message in capsys.readouterr().err
