"""Upstream MegEngine's command-line tools, run as ``python3 -m megengine.tools.<name>``, on this
fork's dumped programs (`megengine.jit.trace.dump`) and profiler files
(`megengine.utils.profiler`):

- `load_network_and_run`: run a dumped program on given or random inputs, time it, check its
  stored test cases, profile it;
- `network_visualize`: per-operator parameters, FLOPs and activations of a dumped program;
- `draw_graph`: a Graphviz ``.dot`` file of a dumped program;
- `profile_analyze`: tables of a profiler file (top operators, per-type totals);
- `profiler`: run a Python script (or module) under the profiler;
- `dump_with_testcase_mge`: add test cases (inputs and the outputs computed from them) to a
  dumped program.

Each tool is a module with ``main(argv=None)``. The tools upstream has that need its C++ runtime
or its binary formats are not here; ``docs/api/tools.rst`` lists them with the reasons.
"""
