"""Running a program that `megengine.jit.trace.dump` wrote: `GraphInference` loads the file,
takes inputs by name (or position) and returns the outputs by name, as upstream's
``megengine.utils.comp_graph_tools.GraphInference`` does, without the Python source that made
the program. The file format is this fork's own (see `megengine.jit.dump`); upstream's ``.mge``
graphs for MegEngine Lite cannot be read."""
from collections import OrderedDict

import numpy as np

from ..jit.dump import load

__all__ = ["GraphInference"]


class GraphInference:
    """Load a dumped program for inference.

    ``file``: a path or a binary file object. ``outputs``: the output names to return (default
    all). ``device``: run there instead of the devices it was traced on (e.g. ``"cpu0"`` for
    a program traced on a GPU). ``profiling`` and ``optimize_for_inference`` are upstream's graph
    compiler options, accepted without effect: the program runs op by op as it was traced.
    """

    def __init__(self, file, outputs=None, profiling=False, optimize_for_inference=False,
                 device=None, **kwargs):
        if kwargs:
            raise TypeError(f"GraphInference() got unexpected keyword arguments {sorted(kwargs)}")
        self._program = load(file, device=device)
        names = self._program.outputs
        if outputs is not None:
            outputs = [outputs] if isinstance(outputs, str) else list(outputs)
            unknown = [n for n in outputs if n not in names]
            if unknown:
                raise ValueError(f"GraphInference: the program has no outputs {unknown}; its "
                                 f"outputs are {names}")
        self._outputs = outputs if outputs is not None else list(names)

    @property
    def input_names(self):
        return [n for n, _, _ in self._program.inputs]

    @property
    def output_names(self):
        return list(self._outputs)

    @property
    def metadata(self):
        return self._program.metadata

    def run(self, *inp_args, inp_dict=None):
        """Run once. ``inp_args``: the inputs in order; ``inp_dict``: {name: value} (numpy arrays,
        Tensors or array-likes). Returns an ordered {output name: numpy array}."""
        names = self.input_names
        feeds = {}
        if len(inp_args) > len(names):
            raise ValueError(f"run: {len(inp_args)} positional inputs for a program with "
                             f"{len(names)} inputs {names}")
        for name, v in zip(names, inp_args):
            feeds[name] = v
        for name, v in (inp_dict or {}).items():
            if name in feeds:
                raise ValueError(f"run: input {name!r} given both by position and by name")
            feeds[name] = v
        values = self._program.run(feeds)
        return OrderedDict((n, np.asarray(values[n].numpy())) for n in self._outputs)
