"""megengine.utils.module_stats: FLOPs, parameters and activations against hand-computed counts
(upstream's formulas) and parameter counts against an equivalent torch model."""
import collections
import logging
import warnings

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.utils import module_stats as ms
from megengine.utils.module_stats import module_stats, sizeof_fmt


def stats(net, *args, **kw):
    kw.setdefault("logging_to_stdout", False)
    return module_stats(net, *args, **kw)


def flops_by_name(details):
    return {r["name"]: r["flops_num"] for r in details.flops if r["name"] != "total"}


def test_conv_linear_norm_pool_flops_by_hand():
    net = M.Sequential(
        M.Conv2d(3, 8, 3, stride=1, padding=1),              # 0
        M.BatchNorm2d(8),                                     # 1
        M.ReLU(),                                             # 2: not counted
        M.MaxPool2d(2),                                       # 3
        M.Conv2d(8, 4, (3, 1), padding=(1, 0), groups=2, bias=False),  # 4
        M.AvgPool2d((2, 2)),                                  # 5
        M.AdaptiveAvgPool2d((1, 1)),                          # 6
    )
    total, details = stats(net, input_shapes=(2, 3, 8, 8))
    got = flops_by_name(details)
    n = 2
    expected = {
        "0": n * 8 * 8 * 8 * (3 * 3 * 3 + 1),  # out numel * (Cin * k + bias)
        "1": n * 8 * 8 * 8 * 7,                # 7 per input element
        "3": n * 8 * 4 * 4 * 2 * 2,            # out numel * window
        "4": n * 4 * 4 * 4 * (8 // 2 * 3 * 1),  # groups=2, no bias
        "5": n * 4 * 2 * 2 * 4,
        "6": 0,  # upstream's adaptive pooling formula counts an axis of 2 as 0 (see below)
    }
    assert got == expected
    assert total.flops == sum(expected.values())
    # activations: each counted layer's output
    act = {"0": n * 8 * 64, "1": n * 8 * 64, "3": n * 8 * 16, "4": n * 4 * 16, "5": n * 4 * 4,
           "6": n * 4}
    assert total.act_dims == sum(act.values())
    assert total.act_size == 4 * sum(act.values())
    assert details.activations[-1]["name"] == "total"


def test_adaptive_pooling_flops_are_upstreams_count():
    # upstream 1.13 measured: AdaptiveAvgPool2d((1, 1)) of (2, 3, 7, 5) counts 6 (one per
    # output element: its formula takes the stride as floor(in / (in - 1))), AdaptiveAvgPool2d(2)
    # of (1, 2, 8, 8) counts 8, AdaptiveMaxPool2d((2, 3)) of (1, 2, 2, 9) counts 0 (the window
    # of an axis of 2 is 0); of (2, 3, 1, 4) upstream divides by zero, here the axis of 1 is a
    # window of 1 (earlier versions of this fork counted the pooling windows: 210, 128, 36)
    cases = [(M.AdaptiveAvgPool2d((1, 1)), (2, 3, 7, 5), 6),
             (M.AdaptiveAvgPool2d(2), (1, 2, 8, 8), 8),
             (M.AdaptiveMaxPool2d((2, 3)), (1, 2, 2, 9), 0),
             (M.AdaptiveAvgPool2d((1, 1)), (2, 3, 1, 4), 6)]
    for layer, shape, expected in cases:
        total, details = stats(layer, input_shapes=shape)
        assert total.flops == expected and details.flops[0]["flops_num"] == expected


def test_conv_transpose_3d_has_no_flops_formula_as_upstream():
    # upstream 1.13 measured: ConvTranspose3d(2, 3, 3, stride=2) of (1, 2, 3, 3, 3) is hooked
    # (its parameters and activation are counted) but has no FLOPs formula: total 0, no row
    # (earlier versions of this fork counted it as a transposed convolution, 5403)
    total, details = stats(M.ConvTranspose3d(2, 3, 3, stride=2), input_shapes=(1, 2, 3, 3, 3))
    assert total.flops == 0 and [r["name"] for r in details.flops] == ["total"]
    assert len(details.params) == 3 and total.act_dims == 1 * 3 * 7 * 7 * 7


def test_batch_matmul_flops_and_the_total_rows_channels_are_upstreams():
    # upstream 1.13 measured: BatchMatMulActivation(2, 3, 4, bias=False) of (2, 3, 5) counts 90
    # (batch * in * n * in: its formula reads in where out is meant; earlier versions of this
    # fork counted batch * out * n * in = 120), and the flops table's total row has
    # output_shapes 4, the sum of the outputs' second dimensions
    total, details = stats(M.BatchMatMulActivation(2, 3, 4, bias=False),
                           inputs=np.ones((2, 3, 5), np.float32))
    assert total.flops == 90
    assert details.flops[-1] == {"name": "total", "flops": "90.000 OPs", "output_shapes": 4}


def test_linear_conv_transpose_and_batch_matmul_flops():
    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.fc = M.Linear(6, 5)
            self.fc_nobias = M.Linear(5, 3, bias=False)
            self.up = M.ConvTranspose2d(2, 4, 3, stride=2)
            self.bmm = M.BatchMatMulActivation(2, 3, 4)

        def forward(self, x, img, seq):
            return self.fc_nobias(self.fc(x)), self.up(img), self.bmm(seq)

    x = np.ones((7, 6), np.float32)
    img = np.ones((1, 2, 3, 3), np.float32)
    seq = np.ones((2, 3, 5), np.float32)
    total, details = stats(Net(), inputs=[x, img, seq])
    got = flops_by_name(details)
    assert got["fc"] == 7 * 5 * 6 + 5             # out numel * in_features + out_features
    assert got["fc_nobias"] == 7 * 3 * 5
    # transposed: each input element scatters to Cout * k*k outputs, plus a bias per output
    assert got["up"] == (1 * 2 * 3 * 3) * (4 * 9) + (1 * 4 * 7 * 7)
    # upstream's formula, batch * in * (n + bias) * in (its bias=True forward fails on a bias
    # shape, so this one is read from its formula)
    assert got["bmm"] == 2 * 3 * (5 + 1) * 3
    # activations carry mean/std when real inputs were given
    assert {"mean", "std"} <= set(details.activations[0])


def test_param_counts_match_torch_model():
    torch = pytest.importorskip("torch")
    net = M.Sequential(M.Conv2d(3, 6, 3, padding=1), M.BatchNorm2d(6), M.ReLU(),
                       M.Conv2d(6, 6, 3, groups=3, bias=False), M.MaxPool2d(2),
                       M.Flatten() if hasattr(M, "Flatten") else M.Identity())
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6),
                              torch.nn.ReLU(), torch.nn.Conv2d(6, 6, 3, groups=3, bias=False))
    total, details = stats(net, input_shapes=[(1, 3, 8, 8)])
    torch_params = sum(p.numel() for p in ref.parameters())
    assert total.param_dims == torch_params
    assert total.param_size == 4 * torch_params
    assert details.params[-1] == {"name": "total", "param_dim": torch_params,
                                  "size": sizeof_fmt(4 * torch_params)}
    names = [r["name"] for r in details.params[:-1]]
    assert names == ["0-w", "0-b", "1-w", "1-b", "3-w"]


def test_linear_stack_params_match_torch():
    torch = pytest.importorskip("torch")
    net = M.Sequential(M.Linear(10, 20), M.ReLU(), M.Linear(20, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    total, _ = stats(net, inputs=np.zeros((4, 10), np.float32))
    assert total.param_dims == sum(p.numel() for p in ref.parameters())
    assert total.flops == 4 * 20 * 10 + 20 + 4 * 3 * 20 + 3


class Shared0(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class Shared1(Shared0):  # the same layer under two names, called twice
    def __init__(self):
        super().__init__()
        self.conv1 = self.conv

    def forward(self, x):
        return self.conv1(self.conv(x))


class Shared2(Shared0):  # two layers holding the same Parameters
    def __init__(self):
        super().__init__()
        self.conv1 = M.Conv2d(3, 3, 3, padding=1)
        self.conv1.weight = self.conv.weight
        self.conv1.bias = self.conv.bias

    def forward(self, x):
        return self.conv1(self.conv(x))


def test_shared_parameters_count_once():
    base, _ = stats(Shared0(), input_shapes=(1, 3, 6, 6))
    for cls in (Shared1, Shared2):
        t, details = stats(cls(), input_shapes=(1, 3, 6, 6))
        assert (t.param_dims, t.param_size) == (base.param_dims, base.param_size)
        assert t.flops == 2 * base.flops  # but both calls cost


def test_weights_read_without_calling_the_layer_are_counted():
    class ConvBn(M.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = M.Conv2d(3, 4, 3, padding=1)
            self.bn1 = M.BatchNorm2d(4)

        def forward(self, x):
            x = F.conv2d(x, self.conv1.weight, self.conv1.bias, padding=1)
            return self.bn1(x)

    total, details = stats(ConvBn(), input_shapes=(1, 3, 5, 5))
    names = [r["name"] for r in details.params]
    assert "conv1-w" in names and "conv1-b" in names
    assert total.param_dims == 4 * 3 * 9 + 4 + 4 + 4
    assert "__getattribute__" not in vars(M.Module)  # the watcher is gone afterwards


def test_model_modes_and_class_restored_after_an_error():
    class Broken(M.Module):
        def __init__(self):
            super().__init__()
            self.fc = M.Linear(2, 2)

        def forward(self, x):
            assert not self.training  # module_stats runs in eval mode
            self.fc(x)
            raise RuntimeError("boom")

    net = Broken()
    net.train()
    with pytest.raises(RuntimeError, match="boom"):
        stats(net, input_shapes=(1, 2))
    assert net.training and net.fc.training
    assert "__getattribute__" not in vars(M.Module)
    assert not net.fc._forward_hooks  # hooks removed


def test_input_containers_reach_the_model():
    seen = []

    class Probe(M.Module):
        def __init__(self):
            super().__init__()
            self.fc = M.Linear(2, 1)

        def forward(self, x):
            seen.append(x)
            if isinstance(x, dict):
                x = x["a"]
            elif isinstance(x, tuple) and hasattr(x, "_fields"):
                x = x.n
            elif isinstance(x, list):
                x = x[0]
            return self.fc(x)

    nt = collections.namedtuple("nt", ["n", "t"])
    arr = np.ones((1, 2), np.float32)
    for inp in ({"a": arr}, nt(n=arr, t=arr), [[arr, arr]]):
        total, _ = stats(Probe(), inputs=inp)
        assert total.flops == 1 * 1 * 2 + 1
    assert isinstance(seen[0], dict) and isinstance(seen[0]["a"], mge.Tensor)
    assert type(seen[1]).__name__ == "nt" and isinstance(seen[1].t, mge.Tensor)
    assert isinstance(seen[2], list) and isinstance(seen[2][1], mge.Tensor)


def test_older_upstream_spellings_of_the_shapes():
    net = M.Sequential(M.Linear(3, 2))
    expected = stats(net, input_shapes=(4, 3))[0]
    assert stats(net, (4, 3))[0] == expected  # 1.4/1.5: shapes as the second argument
    assert stats(net, [(4, 3)])[0] == expected
    assert stats(net, input_size=(4, 3))[0] == expected  # 1.3's keyword
    assert expected.flops == 4 * 2 * 3 + 2


def test_cal_switches_and_missing_inputs():
    net = M.Sequential(M.Linear(3, 2))
    total, details = stats(net, input_shapes=(1, 3), cal_params=False, cal_flops=False)
    assert total.param_dims == 0 and total.flops == 0
    # upstream 1.13 measured: the parameters the forward reads are still listed, unsummed (no
    # total row, no sizes added)
    assert [(r["name"], r["shape"], r["param_dim"]) for r in details.params] == [
        ("0-w", (2, 3), 6), ("0-b", (2,), 2)]
    assert sorted(details.params[0]) == ["dtype", "mean", "name", "nbits", "param_dim", "shape",
                                         "size", "std"]
    assert total.act_dims == 2
    total, details = stats(net, input_shapes=(1, 3), cal_activations=False)
    assert total.act_dims == 0 and details.activations == []
    with pytest.raises(ValueError, match="input_shapes"):
        module_stats(net)


def test_statistics_of_huge_activations_are_inf_or_nan_without_a_warning():
    # upstream 1.13 measured: a 1x1 convolution by 1e20 of arange(16) shows mean 7.5e+20 and std
    # inf, by 3e38 mean inf and std nan, and warns of neither (HQSNet with random weights
    # reaches such values)
    for scale, want in ((1e20, ("7.5e+20", "inf")), (3e38, ("inf", "nan"))):
        conv = M.Conv2d(1, 1, 1, bias=False)
        conv.weight._reset(mge.tensor(np.full((1, 1, 1, 1), scale, "float32")))
        x = np.arange(16, dtype="float32").reshape(1, 1, 4, 4)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, details = stats(conv, inputs=(x,))
        row = details.activations[0]
        assert (row["mean"], row["std"]) == want


def test_logged_tables():
    logger = logging.getLogger("megengine.utils.module_stats")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        module_stats(M.Sequential(M.Linear(3, 2)), input_shapes=(1, 3), log_params=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = "\n".join(r.getMessage() for r in records)
    assert "flops stats" in text and "activations stats" in text and "summary" in text
    assert "param stats" not in text  # log_params=False
    assert "total_flops" in text and "8.000 OPs" in text  # 1*2*3 + 2


def _logged(*args, **kw):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    ms.logger.addHandler(handler)
    try:
        module_stats(*args, **kw)
    finally:
        ms.logger.removeHandler(handler)
    return [r.getMessage() for r in records]


def test_logged_tables_are_upstreams_text():
    # upstream 1.13 measured (its tables are tabulate's: the header is the first row, no rule
    # under it, no trailing blanks; the summary is logged also with logging_to_stdout=False).
    # Earlier versions of this fork ruled off the header, padded the last column and left the
    # summary out with logging_to_stdout=False.
    net = M.Linear(3, 2)
    net.load_state_dict({"weight": np.array([[1, 2, 3], [4, 5, 6]], "float32"),
                         "bias": np.array([0.5, -0.5], "float32")})
    params, flops, acts, summary = _logged(net, input_shapes=(1, 3), bar_length_max=5)
    assert flops == (
        "flops stats: \n"
        "-----  ----------  ------------  -------------  ---------  ---------  ----------  -----\n"
        "name   class_name  input_shapes  output_shapes  flops      flops_cum  percentage  bar\n"
        "       Linear      [(1, 3)]      [(1, 2)]       8.000 OPs  8.000 OPs  100.00%     #####\n"
        "total                            2              8.000 OPs\n"
        "-----  ----------  ------------  -------------  ---------  ---------  ----------  -----")
    assert params.splitlines()[3:5] == [
        "-w     float32  (2, 3)  3.5   1.71  6          32     24.000 B  24.000 B  75.00%"
        "      #####",
        "-b     float32  (2,)    0     0.5   2          32     8.000 B   32.000 B  25.00%      #"]
    assert acts.splitlines()[2] == ("name   class_name  dtype    shape   nbits  act_dim  size     "
                                    "size_cum  percentage  size_bar")
    expected_summary = (
        "summary\n----------------  ---------\nitem              value\n#params           2\n"
        "total_param_dims  8.000\ntotal_param_size  32.000 B\ntotal_flops       8.000 OPs\n"
        "total_act_dims    2.000\ntotal_act_size    8.000 B\nflops/param_size  0.250\n"
        "----------------  ---------")
    assert summary == expected_summary
    assert _logged(net, input_shapes=(1, 3), logging_to_stdout=False) == [expected_summary]


def test_register_flops_for_a_new_layer_type():
    class Scale(M.Module):
        def forward(self, x):
            return x * 2

    ms.register_hook_module(Scale)
    try:
        @ms.register_flops(Scale)
        def flops_scale(module, inputs, outputs):
            return int(np.prod(outputs[0].shape))

        total, details = stats(M.Sequential(Scale()), input_shapes=(2, 5))
        assert total.flops == 10 and details.flops[0]["class_name"] == "Scale"
    finally:
        ms.hook_modules.remove(Scale)
        ms._flops_of_type.pop(Scale, None)
    with pytest.raises(TypeError, match="Module subclass"):
        ms.register_hook_module(3)


def test_sizeof_fmt():
    assert sizeof_fmt(512) == "512.000 B"
    assert sizeof_fmt(1536) == "1.500 KiB"
    assert sizeof_fmt(3 * 1024 ** 3) == "3.000 GiB"
    assert sizeof_fmt(2e9, suffix="OPs") == "2.000 GOPs"
    assert sizeof_fmt(999, suffix="") == "999.000 "


def test_a_long_table_reaches_the_console_whole_as_upstreams():
    # upstream 1.13's module_stats sets MegEngineLogFormatter.max_lines to inf: its tables are
    # never cut on the console. Here a message of max_lines lines or more keeps only its head
    # and tail, except module_stats' tables (HQS-Net's 645 rows lost 393 before)
    import io

    from megengine.logger import MegEngineLogFormatter

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(MegEngineLogFormatter())
    ms.logger.addHandler(handler)
    net = M.Sequential(*[M.Linear(1, 1) for _ in range(MegEngineLogFormatter.max_lines)])
    try:
        stats(net, input_shapes=(1, 1), logging_to_stdout=True)
        ms.logger.info("\n".join(["x"] * MegEngineLogFormatter.max_lines))  # another message
    finally:
        ms.logger.removeHandler(handler)
    text = out.getvalue()
    rows = MegEngineLogFormatter.max_lines - 1
    assert f"\n{rows}-w " in text and f"\n{rows}-b " in text  # the last layer's param rows
    assert text.count("log lines omitted") == 1  # only the other message was cut


def test_flops_rows_print_as_upstreams_with_its_key_order():
    # upstream 1.13 measured (numpy 1.26): its formulas compute in floats for convolutions and
    # adaptive pooling (rows print 912.0, 2.0), in integers for the others; each row's keys
    # come in this order. Python numbers here, so that numpy 2 prints them the same way.
    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.c = M.Conv2d(2, 3, 3)
            self.t = M.ConvTranspose2d(3, 2, 2, stride=2)
            self.bn = M.BatchNorm2d(2)
            self.p = M.MaxPool2d(2)
            self.a = M.AdaptiveAvgPool2d(1)
            self.l = M.Linear(2, 4)

        def forward(self, x):
            x = self.p(self.bn(self.t(self.c(x))))
            return self.l(self.a(x).reshape(1, 2))

    _, details = stats(Net(), inputs=(np.ones((1, 2, 6, 6), "float32"),))
    rows = {r["name"]: r for r in details.flops}
    expected = {"c": "912.0", "t": "512", "bn": "896", "p": "128", "a": "2.0", "l": "12"}
    for name, text in expected.items():
        assert repr(rows[name]["flops_num"]) == text, name
        assert list(rows[name]) == ["input_shapes", "output_shapes", "flops_num", "name",
                                    "class_name", "flops_cum", "ratio", "percentage", "bar",
                                    "flops"]
    assert repr(rows["c"]["ratio"]) == repr(912 / 2462)
    assert list(rows["total"]) == ["name", "flops", "output_shapes"]


def _records(call):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    ms.logger.addHandler(handler)
    try:
        result = call()
    finally:
        ms.logger.removeHandler(handler)
    return result, [r.getMessage() for r in records]


def test_the_steps_of_module_stats_are_public_as_upstreams():
    # upstream 1.13's get_op_stats / sum_*_stats / print_*_stats / print_summary / dict2table,
    # which its network tools call one by one; values by hand (upstream's formulas)
    conv, lin = M.Conv2d(3, 4, 3, padding=1), M.Linear(5, 2)
    x = mge.tensor(np.ones((1, 3, 5, 5), "float32"))
    y, z = conv(x), lin(x)
    assert ms.get_op_stats(M.ReLU(), [x], y) is None  # no FLOPs formula
    # 1 * 4 * 5 * 5 outputs * (3 * 3 * 3 + a bias); 30 outputs * 5 inputs + 2 biases
    assert ms.get_op_stats(conv, [x], y) == {"input_shapes": [(1, 3, 5, 5)],
                                             "output_shapes": [(1, 4, 5, 5)], "flops_num": 2800}
    assert ms.get_op_stats(lin, (x,), (z,))["flops_num"] == 152 == ms.flops_linear(lin, [x], [z])
    assert ms.flops_convNd(conv, [x], [y]) == 2800  # upstream's name of the formula
    flops = [dict(ms.get_op_stats(conv, [x], y), name="c", class_name="Conv2d"),
             dict(ms.get_op_stats(lin, [x], z), name="l", class_name="Linear")]
    total, rows = ms.sum_op_stats(flops, bar_length_max=10)
    assert total == 2952 and rows is flops
    assert [(r["flops_cum"], r["percentage"], r["bar"], r["flops"]) for r in rows[:2]] == [
        ("2.800 KOPs", "94.85%", "#" * 10, "2.800 KOPs"),
        ("2.952 KOPs", "5.15%", "", "152.000 OPs")]
    assert rows[2] == {"name": "total", "flops": "2.952 KOPs", "output_shapes": 4 + 3}
    params = [dict(ms.get_param_stats(conv.weight), name="c-w"),
              dict(ms.get_param_stats(conv.bias), name="c-b")]
    dims, size, rows = ms.sum_param_stats(params, 8)
    assert (dims, size, rows[-1]) == (112, 448, {"name": "total", "param_dim": 112,
                                                 "size": "448.000 B"})
    assert [(r["size"], r["size_cum"], r["percentage"], r["size_bar"]) for r in rows[:2]] == [
        ("432.000 B", "432.000 B", "96.43%", "#" * 8), ("16.000 B", "448.000 B", "3.57%", "")]
    acts = [dict(ms.get_activation_stats(y), name="c", class_name="Conv2d")]
    assert ms.sum_activations_stats(acts)[:2] == (100, 400)
    assert ms.dict2table([{"a": 1, "b": 2}, {"b": 3, "z": 9}], ["a", "b"]) == [
        ["a", "b"], [1, 2], ["", 3]]
    _, logged = _records(lambda: (ms.print_op_stats(flops), ms.print_param_stats(params),
                                  ms.print_activations_stats(acts),
                                  ms.print_summary(a=1, bb="x")))
    assert [m.split("\n")[0] for m in logged] == [
        "flops stats: ", "param stats: ", "activations stats: ", "summary"]
    assert logged[0].splitlines()[3] == ("c      Conv2d      [(1, 3, 5, 5)]  [(1, 4, 5, 5)]  "
                                         "2.800 KOPs   2.800 KOPs  94.85%      ##########")
    assert logged[3] == "summary\n----  -----\nitem  value\na     1\nbb    x\n----  -----"


def test_module_stats_logs_what_its_public_steps_log():
    net = M.Sequential(M.Conv2d(3, 4, 3), M.Linear(2, 3))
    x = np.ones((1, 3, 4, 4), "float32")
    (_, details), logged = _records(lambda: module_stats(net, x, bar_length_max=7))
    _, again = _records(lambda: (ms.print_param_stats(details.params),
                                 ms.print_op_stats(details.flops),
                                 ms.print_activations_stats(details.activations, True)))
    assert logged[:3] == again
