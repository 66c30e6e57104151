"""Tests of megenginelite/network.py: a dumped model loaded and run by LiteNetwork gives what the
model computes eagerly, through upstream's Lite calls."""
import io

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.jit import trace
from megenginelite import (LiteConfig, LiteDeviceType, LiteIO, LiteLayout, LiteNetwork,
                           LiteNetworkIO, LiteTensor, LiteTensorPhase)


class _Net(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 4, 3, padding=1)
        self.fc = M.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return F.softmax(self.fc(F.flatten(F.relu(self.conv(x)), 1)))


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    np.random.seed(1)
    net = _Net()
    net.eval()

    @trace(symbolic=True, capture_as_const=True)
    def infer(data, *, net):
        return net(data)

    infer(mge.tensor(np.random.rand(1, 3, 5, 5).astype("float32")), net=net)
    path = str(tmp_path_factory.mktemp("lite") / "net.mge")
    infer.dump(path, arg_names=["data"], output_names=["prob"])
    return path, net


def test_forward_gives_the_eager_models_output(dumped):
    path, net = dumped
    network = LiteNetwork()
    network.load(path)
    assert network.get_all_input_name() == ["data"] and network.get_input_name(0) == "data"
    assert network.get_all_output_name() == ["prob"] and network.get_output_name(0) == "prob"
    inp = network.get_io_tensor("data")
    assert inp.layout == LiteLayout([1, 3, 5, 5], "float32")  # the layout the model was dumped with
    for seed in (2, 3):  # a second forward reads the new data
        x = np.random.RandomState(seed).rand(1, 3, 5, 5).astype("float32")
        inp.set_data_by_copy(x)
        network.forward()
        network.wait()
        out = network.get_io_tensor("prob", LiteTensorPhase.LITE_OUTPUT)
        np.testing.assert_allclose(out.to_numpy(), net(mge.tensor(x)).numpy(), rtol=1e-6,
                                   atol=1e-7)
    assert network.get_io_tensor("prob") is out  # one tensor per output


def test_load_from_a_file_object_and_configured_input_layout(dumped):
    path, net = dumped
    x = np.random.RandomState(4).rand(2, 3, 5, 5).astype("float32")
    io_cfg = LiteNetworkIO(inputs=[LiteIO("data", layout=LiteLayout([2, 3, 5, 5]))])
    network = LiteNetwork(LiteConfig(LiteDeviceType.LITE_CPU), io_cfg)
    with open(path, "rb") as f:
        network.load(f)
    inp = network.get_io_tensor("data")
    assert inp.layout.shapes == [2, 3, 5, 5]
    inp.set_data_by_share(x)
    seen = {}
    network.set_start_callback(lambda ios: seen.update(start=[i.name for i in ios]))
    network.set_finish_callback(lambda ios: seen.update(
        finish={i.name: t.to_numpy().shape for i, t in ios.items()}))
    network.forward()
    assert seen == {"start": ["data"], "finish": {"prob": (2, 3)}}
    np.testing.assert_allclose(network.get_io_tensor("prob").to_numpy(),
                               net(mge.tensor(x)).numpy(), rtol=1e-6, atol=1e-7)


def test_misuse_gets_clear_errors(dumped):
    path, _ = dumped
    network = LiteNetwork()
    with pytest.raises(RuntimeError, match="no model is loaded"):
        network.forward()
    network.load(io.BytesIO(open(path, "rb").read()))
    with pytest.raises(ValueError, match="no LITE_IO tensor 'image'.*inputs are \\['data'\\]"):
        network.get_io_tensor("image")
    with pytest.raises(ValueError, match="no LITE_INPUT tensor 'prob'"):
        network.get_io_tensor("prob", LiteTensorPhase.LITE_INPUT)
    with pytest.raises(IndexError, match="has 1 outputs"):
        network.get_output_name(1)
    with pytest.raises(ValueError, match="CPU only"):
        LiteNetwork(LiteConfig(LiteDeviceType.LITE_CUDA))
    with pytest.raises(RuntimeError, match="TensorRT"):
        network.use_tensorrt()


def test_misuse_errors_are_also_upstreams_types(dumped):
    """Upstream 1.13's Lite (measured) raises its C++ library's RuntimeError for a name or
    index it lacks and a shape that does not fit, asserts in Python that a file is a file
    and a tensor is a tensor, and numpy raises TypeError for a dtype name it lacks."""
    path, _ = dumped
    network = LiteNetwork()
    network.load(path)
    t = network.get_io_tensor("data")
    for call, kinds in [
        (lambda: network.get_io_tensor("image"), (ValueError, RuntimeError)),
        (lambda: network.get_input_name(5), (IndexError, RuntimeError)),
        (lambda: t.reshape([7, 7, 7]), (ValueError, RuntimeError)),
        (lambda: LiteNetwork().load(3), (TypeError, AssertionError)),
        (lambda: t.set_data_by_copy("abc"), (TypeError, AssertionError)),
        (lambda: t.copy_from(3), (TypeError, AssertionError)),
        (lambda: LiteTensor(dtype="nodtype"), (TypeError, ValueError)),
        (lambda: LiteTensor(shapes="ab"), (TypeError,)),  # (int("a") raised before)
    ]:
        with pytest.raises(kinds[0]) as error:
            call()
        assert all(isinstance(error.value, k) for k in kinds), (error.value, kinds)
    with pytest.raises(TypeError, match="threads_number must be an int, got 'x'"):
        network.threads_number = "x"


def test_the_api_page_example_runs():
    """docs/api/lite.rst's block dumps a model and runs it through LiteNetwork (it asserts the
    output equals the eager model's)."""
    from pathlib import Path

    from tests.test_docs import run_block

    run_block(Path(__file__).parents[2] / "docs" / "api" / "lite.rst", "network = LiteNetwork()")


def test_weight_sharing_and_the_settings_that_choose_kernels(dumped, tmp_path):
    # upstream's share_weights_with runs the source's model (no load) with this network's own
    # tensors; its algorithm policy, workspace limit, layout transform and memory sharing choose
    # how its runtime computes, and are accepted here with the same values computed
    from megenginelite import LiteAlgoSelectStrategy as S

    path, net = dumped
    src = LiteNetwork()
    with pytest.raises(RuntimeError, match="no model is loaded"):
        LiteNetwork().share_weights_with(src)
    src.load(path)
    src.set_network_algo_policy(S.LITE_ALGO_PROFILE | S.LITE_ALGO_REPRODUCIBLE, 1, True)
    src.set_network_algo_workspace_limit(1 << 20)
    src.enable_global_layout_transform()
    shared = LiteNetwork()
    shared.share_weights_with(src)
    shared.share_runtime_memroy(src)
    xs = [np.random.RandomState(k).rand(1, 3, 5, 5).astype("float32") for k in (5, 6)]
    for network, x in zip((src, shared), xs):
        network.get_io_tensor("data").set_data_by_copy(x)
    for network, x in zip((shared, src), xs[::-1]):
        network.forward()
        np.testing.assert_allclose(network.get_io_tensor("prob").to_numpy(),
                                   net(mge.tensor(x)).numpy(), rtol=1e-6, atol=1e-7)
    assert shared.get_io_tensor("data") is not src.get_io_tensor("data")
    model = str(tmp_path / "transformed.mge")
    src.dump_layout_transform_model(model)
    again = LiteNetwork()
    again.load(model)
    again.get_io_tensor("data").set_data_by_copy(xs[0])
    again.forward()
    np.testing.assert_allclose(again.get_io_tensor("prob").to_numpy(),
                               net(mge.tensor(xs[0])).numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="LiteAlgoSelectStrategy"):
        src.set_network_algo_policy(16)
    with pytest.raises(ValueError, match="shared_batch_size"):
        src.set_network_algo_policy(S.LITE_ALGO_HEURISTIC, -1)
    with pytest.raises(ValueError, match="bytes >= 0"):
        src.set_network_algo_workspace_limit(-5)
    with pytest.raises(TypeError, match="LiteNetwork"):
        shared.share_weights_with(path)
