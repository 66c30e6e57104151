"""Tests of megengine/functional/_aten.py: torch loads at the first kernel, and the thread setting."""
import sys

import pytest

from megengine.functional import _aten
from devices import run_python as _run


def test_torch_loads_at_the_first_kernel_with_the_engine_thread_setting():
    # one subprocess for both checks (a fresh interpreter importing torch takes seconds)
    code = ("import sys, numpy as np, megengine as mge, megengine.functional as F\n"
            "print('torch' in sys.modules)\n"
            "x = mge.tensor(np.ones((1, 1, 4, 4), 'float32'))\n"
            "y = F.max_pool2d(x, 2)\n"
            "import torch\n"
            "print('torch' in sys.modules, float(y.sum().numpy()), torch.get_num_threads())")
    assert _run(code, MGE_NUM_THREADS="1", OMP_NUM_THREADS="2") == ["False", "True", "4.0", "1"]


def test_a_torch_that_cannot_be_imported_is_named_with_what_needs_it_and_the_fix():
    # sys.modules["torch"] = None makes "import torch" raise ImportError, as a CUDA wheel
    # installed without its nvidia libraries does (libcudnn.so.9: cannot open shared object file)
    code = ("import sys, numpy as np\n"
            "sys.modules['torch'] = None\n"
            "import megengine as mge, megengine.functional as F\n"
            "x = mge.tensor(np.ones((1, 1, 4, 4), 'float32'))\n"
            "try:\n"
            "    F.max_pool2d(x, 2)\n"
            "except ImportError as e:\n"
            "    print(str(e).replace(' ', '_'), isinstance(e.__cause__, ImportError))\n")
    message, cause = _run(code)
    assert "ATen" in message and "torch_cannot_be_imported" in message
    assert "download.pytorch.org/whl/cpu" in message and "--no-deps" in message
    assert cause == "True"  # the original error stays attached for the traceback


def test_engine_thread_setting_is_torchs_pool():
    import torch

    before = torch.get_num_threads()
    try:
        _aten.set_num_threads(1)
        assert torch.get_num_threads() == 1 and _aten.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="set_num_threads: the number of threads must be a "
                                         "positive integer, got 0"):
        _aten.set_num_threads(0)


def test_use_aten_takes_cuda_arrays_when_torch_has_cuda_and_numpy_only_when_forced():
    import numpy as np
    import torch

    a = np.zeros(3, np.float32)
    # "cuda_only": a family that is not in _ON_CPU (every real one is now, cross entropy too)

    class CudaArray:  # what the switch sees of a CuPy array: not a numpy.ndarray
        pass

    assert not _aten.use_aten(a, "softmax", cpu_worth=False)
    assert not _aten.use_aten(a, "cuda_only")
    # a CPU-only torch leaves CUDA arrays on CuPy's array code instead of failing in the bridge
    # (simulated CUDA devices route ATen to the CPU as a CUDA torch would serve them: tests/simcuda)
    has_cuda = torch.cuda.is_available() or sys.modules.get("simcuda") is not None \
        and sys.modules["simcuda"].installed() is not None
    assert _aten.use_aten(CudaArray(), "softmax") == has_cuda
    with _aten.forced("softmax"):
        assert _aten.use_aten(a, "softmax") and not _aten.use_aten(a, "cuda_only")
        with _aten.forced("softmax", "cuda_only"):  # nested: the inner exit keeps "softmax"
            assert _aten.use_aten(a, "cuda_only")
        assert _aten.use_aten(a, "softmax") and not _aten.use_aten(a, "cuda_only")
    assert not _aten.use_aten(a, "softmax", cpu_worth=False)


def test_cpu_families_take_aten_for_numpy_arrays_unless_avoided_or_not_worth_it():
    import numpy as np

    a = np.zeros(3, np.float32)
    for family in ("gelu", "layer_norm", "softmax", "cross_entropy"):
        assert _aten.use_aten(a, family) and not _aten.use_aten(a, family, cpu_worth=False)
        assert not _aten.is_forced(family)
        with _aten.avoided(family):
            assert not _aten.use_aten(a, family)
            with _aten.avoided(family, "cross_entropy"):  # nested: the inner exit keeps family
                assert not _aten.use_aten(a, family)
            assert not _aten.use_aten(a, family)
            with _aten.forced(family):  # forced wins: a test of the ATen path on any size
                assert _aten.use_aten(a, family, cpu_worth=False) and _aten.is_forced(family)
        assert _aten.use_aten(a, family)


def test_a_torch_that_cannot_be_imported_leaves_the_cpu_families_on_array_code():
    # gelu, layer norm and softmax have array code of their own: without torch they still run
    code = ("import sys, numpy as np\n"
            "sys.modules['torch'] = None\n"
            "import megengine as mge, megengine.functional as F\n"
            "x = mge.tensor(np.linspace(-3, 3, 64 * 64, dtype='float32').reshape(64, 64))\n"
            "y = F.softmax(F.layer_norm(F.gelu(x), 64, False), axis=-1)\n"
            "ce = F.nn.cross_entropy(F.zeros((4, 8)), mge.tensor([0, 1, 2, 7]))\n"
            "r = F.ones((128, 128))\n"  # reductions from 8192 elements take ATen with torch
            "s = (F.sum(r, axis=1) + F.mean(r, axis=0) + F.max(r, axis=1)).numpy()\n"
            "s = s + F.gather(r, 1, F.zeros((128, 1), 'int32'))[:, 0].numpy() - 1\n"  # ATen's too
            "print(round(float(y.sum().numpy())), round(float(ce.numpy()) / np.log(8), 6), "
            "set(s.tolist()), 'torch' in sys.modules and sys.modules['torch'] is not None)\n")
    # cross entropy of equal logits over 8 classes: log(8)
    assert _run(code) == ["64", "1.0", "{130.0}", "False"]


def test_op_is_torchs_binding_where_it_has_one_else_the_aten_namespace():
    import numpy as np
    import torch

    assert _aten.op("convolution") is torch.convolution
    assert _aten.op("native_batch_norm") is torch.native_batch_norm
    assert _aten.op("max_pool2d_with_indices") is torch._C._nn.max_pool2d_with_indices
    assert _aten.op("convolution_backward") is torch.ops.aten.convolution_backward
    # the same op either way: one result for the same arguments
    x, w = torch.randn(2, 3, 6, 5), torch.randn(4, 3, 3, 3)
    args = (None, (2, 1), (1, 0), (1, 1), False, (0, 0), 1)
    np.testing.assert_array_equal(_aten.op("convolution")(x, w, *args).numpy(),
                                  torch.ops.aten.convolution(x, w, *args).numpy())
    with pytest.raises(AttributeError):
        _aten.op("no_such_kernel")
