"""`megengine.utils`: tools around the engine (`comp_graph_tools` runs dumped programs)."""
