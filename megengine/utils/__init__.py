"""`megengine.utils`: tools around the engine, one module each, loaded when imported:
`module_stats` (parameters, FLOPs, activations), `profiler` (Chrome traces of the ops run),
`dlpack`, `bn_fusion`, `tensor_sanity_check`, `deprecation`, `max_recursion_limit`, `hook`,
`future`, `tuple_function`/`types`, `module_utils`, `naming` (upstream's AutoNaming scopes) and
`comp_graph_tools` (runs programs written by ``trace.dump``)."""
