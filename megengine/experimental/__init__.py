"""`megengine.experimental`: the names upstream MegEngine 1.5 kept here before they moved
(``megengine.experimental.traced_module`` is `megengine.traced_module`, upstream 1.6+)."""
import sys

from .. import traced_module

# `from megengine.experimental.traced_module import trace_module` and
# `import megengine.experimental.traced_module` find the one package
sys.modules[__name__ + ".traced_module"] = traced_module

__all__ = ["traced_module"]
