"""`megengine.traced_module`: trace a Module into a graph that can be inspected, edited, run
and pickled (upstream MegEngine 1.6+'s API): `trace_module`, `TracedModule`,
`InternalGraph`, `register_as_builtin`, `wrap`, `enable_expr_checker`,
`disable_default_checker`, `register_supported_type` (a container type whose items tracing
looks into)."""
from ._passes import optimize
from .expr import Apply, CallFunction, CallMethod, Constant, Expr, GetAttr, Input
from .graph import InternalGraph
from .node import ModuleNode, Node, TensorNode
from .pytree import register_supported_type
from .traced_module import TracedModule, trace_module
from .tracer import disable_default_checker, enable_expr_checker, register_as_builtin, wrap

__all__ = ["trace_module", "TracedModule", "InternalGraph", "register_as_builtin", "wrap",
           "enable_expr_checker", "disable_default_checker", "optimize", "register_supported_type",
           "Expr", "Input", "GetAttr", "Constant", "CallFunction", "CallMethod", "Apply",
           "Node", "ModuleNode", "TensorNode"]
