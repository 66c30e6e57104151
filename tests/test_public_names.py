"""The public names of F and its submodules, M, the optimizers and some utilities: upstream's.

The expected names are written out from upstream MegEngine 1.x's sources
(imperative/python/megengine/...): a module's ``__all__`` where upstream defines one (what
``from megengine.functional.nn import *`` gives), else the names its ``__init__``/module binds
publicly. The fork may offer more (newer or 0.x names), never fewer. Like upstream's, the
modules also hold what they import for their own use (``np``, ``apply``); that is not checked.
"""
import importlib
import io
import json
import zipfile

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.jit import trace
from megengine.utils.comp_graph_tools import GraphInference

UPSTREAM_ELEMWISE = """abs add acos asin atan atan2 asinh acosh atanh ceil clip cos cosh div equal
    exp expm1 floor floor_div greater greater_equal left_shift less less_equal log log1p
    logical_and logical_not logical_or logical_xor logaddexp maximum minimum mod mul neg
    not_equal pow right_shift round sin sinh sqrt square sub tan tanh""".split()
UPSTREAM_MATH = """argmax argmin argsort dot isinf isnan matinv matmul max mean min norm normalize
    prod sign sort std sum svd topk var""".split()
UPSTREAM_TENSOR = """arange broadcast_to concat cond_take cumsum diag expand_dims eye flatten full
    full_like gather linspace meshgrid ones ones_like repeat reshape roll split squeeze stack
    scatter tile copy transpose swapaxes where zeros zeros_like""".split()
UPSTREAM_NN = """adaptive_avg_pool2d adaptive_max_pool2d avg_pool2d batch_norm conv1d conv2d conv3d
    conv_transpose2d conv_transpose3d deformable_conv2d deformable_psroi_pooling dropout
    embedding gelu general_norm group_norm hsigmoid instance_norm hswish indexing_one_hot
    layer_norm leaky_relu linear local_conv2d local_response_norm logsigmoid logsumexp
    logsoftmax max_pool2d normalize one_hot prelu pad relu relu6 remap sigmoid sliding_window
    sliding_window_transpose silu softmax softplus sync_batch_norm warp_affine warp_perspective
    pixel_shuffle region_restricted_conv multi_head_attention""".split()
UPSTREAM_VISION = """correlation cvt_color interpolate nms nvof remap roi_align roi_pooling
    warp_affine warp_perspective""".split()
UPSTREAM_LOSS = """l1_loss square_loss cross_entropy binary_cross_entropy hinge_loss
    ctc_loss""".split()

# module -> (whether upstream defines __all__ there, upstream's public names)
UPSTREAM = {
    "megengine.functional.elemwise": (True, UPSTREAM_ELEMWISE),
    "megengine.functional.math": (True, UPSTREAM_MATH),
    "megengine.functional.tensor": (True, UPSTREAM_TENSOR),
    "megengine.functional.nn": (True, UPSTREAM_NN),
    "megengine.functional.vision": (True, UPSTREAM_VISION),
    "megengine.functional.loss": (True, UPSTREAM_LOSS),
    "megengine.functional.metric": (True, ["topk_accuracy"]),
    "megengine.functional.utils": (True, ["topk_accuracy"]),
    "megengine.functional.quantized": (
        False, ["conv_bias_activation", "batch_conv_bias_activation", "conv_transpose2d"]),
    # upstream re-exports megengine.distributed.functional here, its common entry
    # collective_comm included
    "megengine.functional.distributed": (False, """all_gather all_reduce_max all_reduce_min
        all_reduce_sum all_to_all broadcast collective_comm gather reduce_scatter_sum
        reduce_sum remote_recv remote_send scatter""".split()),
    # dir(megengine.distributed) of upstream 1.13, but for its module property ``backend``
    # (readable in a process group only: tests/distributed/test_group.py) and the names it
    # imports for itself (mprop's ``mproperty``)
    "megengine.distributed": (False, """Client Group Server WORLD bcast_list_ functional
        get_backend get_client get_mm_server_addr get_py_server_addr get_rank get_world_size
        group group_barrier group_end group_start helper init_process_group is_distributed
        launcher make_allreduce_cb new_group override_backend server synchronized""".split()),
    "megengine.functional": (False, sorted(
        set(UPSTREAM_ELEMWISE + UPSTREAM_MATH + UPSTREAM_TENSOR + UPSTREAM_NN)
        | {"topk_accuracy", "metric", "utils", "vision", "distributed", "elemwise", "math",
           "nn", "tensor", "loss", "quantized"})),
    "megengine.module": (False, """LeakyReLU PReLU ReLU Sigmoid Softmax AdaptiveAvgPool2d
        AdaptiveMaxPool2d BatchNorm1d BatchNorm2d SyncBatchNorm Concat Conv2d ConvRelu2d
        ConvTranspose2d LocalConv2d ConvBn2d ConvBnRelu2d Dropout Elemwise Embedding Identity
        Linear Module AvgPool2d MaxPool2d DequantStub QuantStub Sequential""".split()),
    "megengine.version": (False, ["__version__", "git_version"]),
    "megengine.optimizer": (False, """Adadelta Adagrad Adam AdamW clip_grad_norm
        clip_grad_value LRScheduler MultiStepLR CosineAnnealingLR Optimizer SGD""".split()),
    # the names these modules define themselves (not what they import), but upstream's
    # receptive-field functions of its graph tools (module_stats), register_method_to_class
    # (utils) and the old all-reduce callback's pack_allreduce_split / TensorFuture (helper)
    "megengine.utils.module_stats": (False, """dict2table flops_adaptivePool flops_batchmatmul
        flops_convNd flops_convNdTranspose flops_linear flops_norm flops_pool
        get_activation_stats get_op_stats get_param_stats module_stats print_activations_stats
        print_op_stats print_param_stats print_summary register_flops register_hook_module
        sizeof_fmt sum_activations_stats sum_op_stats sum_param_stats get_dtype_bit""".split()),
    "megengine.quantization.utils": (False, """LSQParams QParams QParamsModuleMixin QuantMode
        Round create_qparams fake_quant_bias fake_quant_tensor lsq_forward
        tqt_forward""".split()),
    "megengine.distributed.helper": (False, """AllreduceCallback bcast_list_ get_offsets
        make_allreduce_cb param_pack_concat param_pack_split synchronized
        get_device_count_by_fork""".split()),
    "megengine.traced_module.fake_quant": (False, ["FakeQuantize"]),
}


@pytest.mark.parametrize("name", sorted(UPSTREAM))
def test_public_names_contain_upstreams(name):
    module = importlib.import_module(name)
    has_all, expected = UPSTREAM[name]
    assert sorted(n for n in expected if not hasattr(module, n)) == []
    if has_all:
        assert sorted(set(expected) - set(module.__all__)) == []
        star = {}
        exec(f"from {name} import *", star)
        assert sorted(set(expected) - set(star)) == []


def test_version_module_gives_the_package_version():
    import megengine.version

    assert megengine.version.__version__ == mge.__version__ and mge.version is megengine.version
    assert isinstance(megengine.version.git_version, str)


def test_moved_homes_are_the_same_objects():
    # upstream's homes (F.tensor.cumsum, F.metric.topk_accuracy) and the fork's older ones
    assert F.tensor.cumsum is F.math.cumsum is F.cumsum
    assert F.metric.topk_accuracy is F.utils.topk_accuracy is F.topk_accuracy
    for name in ("pad", "one_hot", "remap", "warp_perspective", "normalize"):
        assert getattr(F.nn, name) is getattr(F, name)


def test_a_dump_naming_cumsum_in_math_still_loads():
    # programs dumped before cumsum moved to F.tensor name its op megengine.functional.math:Cumsum
    f = trace(lambda x: F.cumsum(x, axis=1) * 2, symbolic=True, capture_as_const=True)
    x = np.arange(6, dtype="float32").reshape(2, 3)
    f(mge.tensor(x))
    file = io.BytesIO()
    f.dump(file, arg_names=["x"])
    data = file.getvalue()
    data = data[16:16 + int.from_bytes(data[8:16], "little")]  # the archive (dump.py's layout)
    old, new = io.BytesIO(), io.BytesIO()
    old.write(data)
    with zipfile.ZipFile(old) as src, zipfile.ZipFile(new, "w") as dst:
        for item in src.namelist():
            content = src.read(item)
            if item == "graph.json":
                graph = json.loads(content)
                ops = [step.get("op") for step in graph["steps"]]
                assert "megengine.functional.tensor:Cumsum" in ops
                content = content.replace(b"megengine.functional.tensor:Cumsum",
                                          b"megengine.functional.math:Cumsum")
            dst.writestr(item, content)
    new.seek(0)
    (out,) = GraphInference(new).run(x).values()
    np.testing.assert_array_equal(out, np.cumsum(x, axis=1) * 2)


def test_nvof_refuses_with_a_reason():
    with pytest.raises(ValueError, match=r"\(n, t, h, w, 4\)"):
        F.vision.nvof(mge.tensor(np.zeros((1, 2, 4, 4, 3), "uint8")))
    with pytest.raises(RuntimeError, match="Optical Flow SDK"):
        F.vision.nvof(mge.tensor(np.zeros((1, 2, 4, 4, 4), "uint8")))


def test_submodules_upstreams_import_megengine_loads_are_attributes():
    # upstream 1.13 measured: after `import megengine` (nothing else), megengine.module.qat,
    # .quantized and megengine.functional.inplace, .debug_param, .external are in sys.modules,
    # so `M.qat.Conv2d` works without importing the package. Here they load on first use.
    import subprocess
    import sys

    code = ("import sys, megengine.module as M, megengine.functional as F\n"
            "assert 'megengine.module.qat' not in sys.modules\n"
            "conv, linear = M.qat.Conv2d, M.quantized.Linear\n"
            "from megengine.module.qat import Conv2d\n"
            "from megengine.module.quantized import Linear\n"
            "assert conv is Conv2d and linear is Linear\n"
            "assert callable(F.debug_param.set_execution_strategy)\n"
            "assert F.inplace.__name__ == 'megengine.functional.inplace'\n"
            "assert F.external.__name__ == 'megengine.functional.external'\n"
            "try:\n    M.quantize\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "module 'megengine.module' has no attribute 'quantize'"


# upstream 1.13 measured: dir() of these F submodules also holds these megengine functions,
# imported there for the modules' own use, which programs reach as F.<sub>.<name>
UPSTREAM_MODULE_LEVEL = {
    "math": "broadcast_to expand_dims squeeze",
    "tensor": "ceil cos sin get_default_device",
    "elemwise": "hsigmoid hswish relu relu6 sigmoid",
    "vision": "argsort broadcast_to expand_dims floor reshape transpose",
    "loss": """abs broadcast_to cumsum equal indexing_one_hot linspace log logaddexp logsigmoid
        logsumexp maximum ones relu where zeros""",
    "metric": "abs broadcast_to maximum minimum transpose",
    "utils": "abs copy maximum minimum ones zeros",
    "debug_param": "get_logger",
    "quantized": "get_execution_strategy",
    "nn": """all_reduce_sum conv_bias_activation exclude_from_trace get_cudnn_version
        get_default_device get_execution_strategy get_logger is_cuda_available is_distributed
        nvof""",
}


@pytest.mark.parametrize("sub", sorted(UPSTREAM_MODULE_LEVEL))
def test_submodules_hold_upstreams_module_level_functions(sub):
    module = importlib.import_module("megengine.functional." + sub)
    homes = (F, mge, F.quantized, F.debug_param, F.vision, F.distributed,
             importlib.import_module("megengine.device"), importlib.import_module("megengine.jit"),
             importlib.import_module("megengine.distributed"))
    for name in UPSTREAM_MODULE_LEVEL[sub].split():
        value = getattr(module, name)
        # the same function as its home's (F.relu, mge.get_logger, ...)
        assert any(getattr(home, name, None) is value for home in homes), (sub, name)


# upstream 1.13 measured: dir() of these modules lists these names, which this fork serves on
# first use (a module __getattr__) or as module properties; dir() and tab completion list them
LISTED_BY_DIR = {
    "megengine": """amp autodiff cgtools config data distributed dtr functional hub jit load
        module optimizer quantization random save serialization traced_module utils version
        coalesce_free_memory get_cuda_compute_capability get_max_reserved_memory""",
    "megengine.functional": "distributed external inplace debug_param",
    "megengine.module": "qat quantized",
    "megengine.config": """async_level benchmark_kernel benchmark_with_subprocess
        deterministic_kernel disable_memory_forwarding""",
    "megengine.amp": "enabled high_prec_dtype low_prec_dtype autocast GradScaler",
    "megengine.dtr": "enable_sqrt_sampling evictee_minimum_size eviction_threshold enable",
    "megengine.distributed": "backend functional launcher",
    "megengine.data.dataset": """cifar cityscapes coco folder imagenet meta_vision mnist
        objects365 utils voc""",
}


@pytest.mark.parametrize("name", sorted(LISTED_BY_DIR))
def test_dir_lists_the_names_served_on_first_use(name):
    module = importlib.import_module(name)
    listed = dir(module)
    assert listed == sorted(listed)
    missing = [n for n in LISTED_BY_DIR[name].split() if n not in listed]
    assert not missing, f"dir({name}) lacks {missing}"
    assert all(hasattr(module, n) for n in listed if n != "backend")  # backend: after init
