"""`convert_tensor_format` / `convert_module_format`: label 4-D/5-D tensors (a module's
parameters and buffers) ``format="nhwc"`` and give them channels-last storage, as upstream's amp
does for its NHWC (cuDNN channels-last) kernels.

The values, shapes and gradients a program sees do not change: an ``"nhwc"`` tensor behaves as
its NCHW tensor (`megengine.core.format`), and ``megengine.config._auto_format_convert = False``
shows its NHWC array, as upstream does (a grouped weight (G, O/G, I/G, kh, kw) shows
(G, O/G, kh, kw, I/G)). What changes is the memory order: the NCHW value is stored as a view of
an NHWC array, which ATen's convolution, pooling and batch norm read without a copy (they then
run their channels-last kernels and return channels-last outputs, which elementwise ops keep).
Optimizers update parameters in place, so the layout lasts through training.
A PyTorchModule's parameters are left alone: they are the torch module's storage (zero copy);
convert the torch module itself with ``module.to(memory_format=torch.channels_last)`` before
wrapping it. Converted inputs reach a PyTorchModule C-contiguous (see `megengine.core.format`).
"""
import copy

from ..core import format as _fmt
from ..core.tensor import Tensor
from ..utils.module_utils import pytorch_modules


def _is_nchw_format(t):
    return t.ndim in _fmt.TO_NHWC and t.format != "nhwc"


def convert_tensor_format(x: Tensor, inplace: bool = True):
    """Label a 4-D/5-D tensor ``"nhwc"`` and store it channels-last (in place, or a new tensor
    with ``inplace=False``); same values. Other tensors are returned unchanged."""
    if not isinstance(x, Tensor):
        raise TypeError(f"convert_tensor_format: expected a Tensor, got {type(x).__name__}")
    if not _is_nchw_format(x):
        return x
    # an NHWC array (a grouped weight's channel dim 2 innermost), seen in NCHW order
    data = _fmt.channels_last(x._data, x._device)
    if inplace:
        # replace the storage, not the value: optimizers update it in place from now on
        x._data = data
    else:
        x = Tensor._wrap(data, x._device)
    x.format = "nhwc"
    return x


def convert_module_format(module, inplace: bool = True):
    """`convert_tensor_format` every 4-D/5-D parameter and buffer of ``module`` (batch-norm
    statistics included); with ``inplace=False`` a deep copy is converted and returned. Returns
    the module."""
    if not inplace:
        module = copy.deepcopy(module)
    torch_owned = {id(t) for _, wrapper in pytorch_modules(module)
                   for _, t in wrapper.named_tensors()}
    for _, t in module.named_tensors():
        if id(t) not in torch_owned:
            convert_tensor_format(t, inplace=True)
    return module
