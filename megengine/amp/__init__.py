"""`megengine.amp`: automatic mixed precision as upstream has it: `autocast` (float16 compute in
matmul, linear and 2-d convolutions, float32 in the float functions such as exp, log and true
division, and PyTorchModule calls through ``torch.autocast``, with float32 master weights),
`GradScaler` (loss scaling with overflow detection) and `convert_module_format` /
`convert_tensor_format` (the ``"nhwc"`` format label with channels-last storage; the program
still sees NCHW tensors: see `megengine.core.format`).

``megengine.amp.enabled``, ``low_prec_dtype`` and ``high_prec_dtype`` read and set the global
autocast state, as upstream's module properties do (`megengine.core.tensor.amp` shows the
same properties)."""
import sys

from ..core import amp as _state
from .autocast import autocast
from .convert_format import convert_module_format, convert_tensor_format
from .grad_scaler import GradScaler

__all__ = ["autocast", "GradScaler", "convert_module_format", "convert_tensor_format",
           "enabled", "low_prec_dtype", "high_prec_dtype"]


sys.modules[__name__].__class__ = _state.AmpStateModule
