"""`convert_module_format`: give a module's 4-D/5-D parameters and buffers the NHWC
(channels-last) memory layout, as upstream's amp does for its NHWC kernels.

Upstream marks such tensors ``format="nhwc"`` and its kernels then run channels-last. Here the
logical shape stays NCHW (as upstream shows it with auto format conversion on) and the storage
becomes channels-last, which the ATen convolution kernels behind ``F.conv2d`` read without a
copy (ATen picks the output layout from the input). Values do not change. ``tensor.format``
says ``"nhwc"`` afterwards.
A PyTorchModule's parameters are left alone: they are the torch module's storage (zero copy);
convert the torch module itself with ``module.to(memory_format=torch.channels_last)`` before
wrapping it.
"""
import copy
import sys

from ..core.dispatch import xp_of
from ..core.tensor import Tensor

# (to channels-last, back). A 5-D tensor is a grouped conv weight (G, O/G, I/G, kh, kw), as
# upstream treats it: its channel dim is 2, moved innermost
_PERMUTATIONS = {4: ((0, 2, 3, 1), (0, 3, 1, 2)), 5: ((0, 1, 3, 4, 2), (0, 1, 4, 2, 3))}


def _is_nchw_format(t):
    return t.ndim in _PERMUTATIONS and getattr(t, "format", "default") != "nhwc"


def convert_tensor_format(x: Tensor, inplace: bool = True):
    """Give a 4-D/5-D tensor channels-last storage (in place, or a new tensor), same values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"convert_tensor_format: expected a Tensor, got {type(x).__name__}")
    if not _is_nchw_format(x):
        return x
    to_last, back = _PERMUTATIONS[x.ndim]
    xp = xp_of(x._data)
    data = xp.ascontiguousarray(x._data.transpose(to_last)).transpose(back)
    if inplace:
        # replace the storage, not the value: optimizers update it in place from now on
        x._data = data
    else:
        x = Tensor._wrap(data, x._device)
    x.format = "nhwc"
    return x


def convert_module_format(module, inplace: bool = True):
    """Convert every 4-D/5-D parameter and buffer of ``module`` to channels-last storage; with
    ``inplace=False`` a deep copy is converted and returned. Returns the module."""
    if not inplace:
        module = copy.deepcopy(module)
    torch_owned = set()
    pytorch = sys.modules.get("megengine.module.pytorch")  # loaded iff a PyTorchModule exists
    if pytorch is not None:
        for m in module.modules():
            if isinstance(m, pytorch.PyTorchModule):
                torch_owned.update(id(t) for _, t in m.named_tensors())
    for _, t in module.named_tensors():
        if id(t) not in torch_owned:
            convert_tensor_format(t, inplace=True)
    return module
