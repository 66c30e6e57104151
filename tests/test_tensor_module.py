"""`megengine.tensor` (megengine/tensor.py): the Tensor class, and a module to import from."""
import pickle
import subprocess
import sys

import numpy as np

import megengine as mge
from devices import child_env


def test_megengine_tensor_is_the_tensor_class():
    assert mge.tensor is mge.Tensor
    x = mge.tensor([1, 2])
    assert type(x) is mge.Tensor and x.dtype == np.int32 and x.tolist() == [1, 2]
    assert isinstance(x, mge.tensor) and isinstance(mge.Parameter([1.0]), mge.tensor)
    assert mge.tensor([1.0], dtype="float16", device="cpux").dtype == np.float16


def test_megengine_tensor_is_also_a_module_to_import_from():
    from megengine.tensor import Parameter, Tensor, tensor

    assert Tensor is mge.Tensor and Parameter is mge.Parameter and tensor is mge.Tensor
    assert sys.modules["megengine.tensor"].Tensor is mge.Tensor
    # importing the submodule again does not turn the package attribute back into a module
    import megengine.tensor  # noqa: F401

    assert mge.tensor is mge.Tensor


def test_classes_live_at_upstreams_path():
    assert (mge.Tensor.__module__, mge.Tensor.__qualname__) == ("megengine.tensor", "Tensor")
    assert mge.Parameter.__module__ == "megengine.tensor"
    assert b"megengine.tensor" in pickle.dumps(mge.Tensor([1.0]), 2)


def test_the_0x_names_are_the_same_objects():
    from megengine.core import Parameter, Tensor, tensor

    assert Tensor is mge.Tensor and Parameter is mge.Parameter and tensor is mge.tensor


def test_top_level_names_upstream_exports():
    for name in ("get_logger", "set_log_level", "set_log_file", "enable_debug_log", "save",
                 "load", "get_default_device", "set_default_device", "is_cuda_available",
                 "get_device_count"):
        assert callable(getattr(mge, name)), name
    for name in ("config", "hub", "logger", "device", "serialization"):
        assert getattr(mge, name).__name__ == "megengine." + name


def test_from_import_in_a_fresh_process_and_without_torch():
    # the way model files start: the first import of megengine comes from `megengine.tensor`
    code = ("from megengine.tensor import Tensor, Parameter; import megengine, sys; "
            "import megengine.config, megengine.hub, megengine.logger; "
            "assert megengine.tensor is Tensor, megengine.tensor; "
            "print(isinstance(megengine.tensor([1]), megengine.tensor), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=child_env())
    assert out.stdout.split() == ["True", "False"]
