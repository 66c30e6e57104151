"""`megengine.utils`: tools around the engine, one module each, loaded when imported:
`module_stats` (parameters, FLOPs, activations), `profiler` (Chrome traces of the ops run),
`dlpack`, `bn_fusion`, `tensor_sanity_check`, `deprecation`, `max_recursion_limit`, `hook`,
`future`, `tuple_function`/`types`, `module_utils`, `naming` (upstream's AutoNaming scopes),
`network`/`network_node` (editing dumped programs) and `comp_graph_tools` (runs programs
written by ``trace.dump``)."""

# Upstream imports `dlpack` here, so `megengine.utils.dlpack.to_dlpack(x)` works after a bare
# `import megengine` (its docstring examples do that); every submodule here loads on first use
# instead, which keeps `import megengine` fast.
_SUBMODULES = {"bn_fusion", "comp_graph_tools", "deprecation", "dlpack", "future", "hook",
               "max_recursion_limit", "module_stats", "module_utils", "naming", "network",
               "network_node", "profiler",
               "tensor_sanity_check", "tuple_function", "types"}


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'megengine.utils' has no attribute {name!r}")
