"""`megengine.experimental`: `get_scaled_model` (weight scaling for training, upstream 1.13's
`weight_scaler`), and the names upstream MegEngine 1.5 kept here before they moved
(``megengine.experimental.traced_module`` is `megengine.traced_module`, upstream 1.6+)."""
import sys

from .. import traced_module
from . import weight_scaler
from .weight_scaler import get_scaled_model

# `from megengine.experimental.traced_module import trace_module` and
# `import megengine.experimental.traced_module` find the one package
sys.modules[__name__ + ".traced_module"] = traced_module

__all__ = ["get_scaled_model", "traced_module", "weight_scaler"]
