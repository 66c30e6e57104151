"""`megengine.functional` (F): thin functions that build ops, upstream's 1.x namespace."""
from . import elemwise, loss, math, metric, nn, tensor, utils, vision  # noqa: F401  (F.nn.conv2d, ...)
from .einsum import einsum  # noqa: F401
from .elemwise import *  # noqa: F401,F403
from .math import *  # noqa: F401,F403
from .nn import *  # noqa: F401,F403
from .tensor import *  # noqa: F401,F403
from .utils import *  # noqa: F401,F403
# upstream 1.0-1.2 spelled the vision ops F.<name> (later F.vision.<name>); keep both working
from .vision import nms, remap, roi_align, roi_pooling, warp_affine, warp_perspective  # noqa: F401,E501
from .vision import deformable_psroi_pooling  # noqa: F401  (upstream 1.3 spells it F.<name>)
# upstream 1.0-1.1 also exported the losses as F.<name> (F.cross_entropy; later only F.nn.<name>)
from .loss import *  # noqa: F401,F403
from ..autodiff.grad_manager import grad  # noqa: F401  (0.x F.grad)
from .legacy import *  # noqa: F401,F403  (0.x names 1.x removed: F.add_axis, F.accuracy, ...)
from . import quantized  # noqa: F401,E402  (F.quantized.conv_bias_activation, ...)


_LAZY = ("distributed", "inplace", "debug_param", "external")


def __getattr__(name):
    # F.distributed (upstream's collectives) loads on first use: it pulls in megengine.distributed.
    # F.inplace, F.debug_param and F.external too: upstream's `import megengine` imports them.
    if name in _LAZY:
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'megengine.functional' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
