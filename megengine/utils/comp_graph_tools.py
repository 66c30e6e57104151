"""Tools on dumped programs, as upstream's ``megengine.utils.comp_graph_tools``: `GraphInference`
loads a file that `megengine.jit.trace.dump` (or `megengine.utils.network.Network.dump`) wrote,
takes inputs by name (or position) and returns the outputs by name, without the Python source
that made the program; `load_and_inference` runs it on a list of inputs or on the test cases
stored in the file; the graph functions (`get_dep_vars`, `get_oprs_seq`, `graph_traversal`,
`replace_vars`, `replace_oprs`, ...) work on the VarNodes and OpNodes of
`megengine.utils.network_node`. The file format is this fork's own (see `megengine.jit.dump`);
upstream's ``.mge`` graphs for MegEngine Lite cannot be read."""
import collections
import copy
from collections import OrderedDict

import numpy as np

from ..core.ops import ArgumentKindError
from ..jit.dump import load
from .network_node import GraphOperator, OpNode, graph_operator, graph_type

__all__ = ["GraphInference", "load_and_inference", "get_dep_vars", "get_owner_opr_inputs",
           "get_owner_opr_type", "get_opr_type", "graph_traversal", "get_oprs_seq",
           "replace_vars", "replace_oprs", "set_priority_to_id"]


class GraphInference:
    """Load a dumped program for inference.

    ``file``: a path or a binary file object. ``outputs``: the output names to return (default
    all). ``device``: where to run instead of the devices the file records, as upstream's
    ``map_location``: a name (``"cpu0"``), a dict ``{recorded name: name}`` or a function of the
    recorded name. Without it a value goes where its recorded name resolves here: ``xpux`` (what
    a program on the default device records) is the GPU if there is one, else the CPU; a device
    this machine lacks (``gpu1``) raises, naming it. ``profiling`` and ``optimize_for_inference`` are upstream's graph
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

    @property
    def testcases(self):
        """The test cases stored by ``trace.dump(input_data=...)``: [(inputs, expected
        outputs)] as {name: numpy array} dicts (empty when the file has none)."""
        return list(self._program.testcases)


def load_and_inference(file, inp_data_list=None):
    """Run a dumped program on each entry of ``inp_data_list`` (an array for a one-input
    program, a list of arrays in input order, or a dict {input name: array}) and return the
    list of results ({output name: array} each).

    Without ``inp_data_list``, the test cases stored in the file by
    ``trace.dump(input_data=...)`` are run, and each output is checked against the stored one
    (within the dump's ``maxerr``; not checked if it was dumped with ``no_assert=True``), as
    upstream's load_and_run does."""
    graph = GraphInference(file)
    results = []
    if inp_data_list is None:
        program = graph._program
        if not program.testcases:
            raise ValueError("load_and_inference: the file holds no test cases (dump with "
                             "input_data=...), so give inp_data_list")
        opts = program.testcase_options
        for k, (inputs, expected) in enumerate(program.testcases):
            got = program.run(inputs, strict_shape=False)
            out = OrderedDict((n, np.asarray(got[n].numpy())) for n in graph.output_names)
            if not opts.get("no_assert", False):
                for n, want in expected.items():
                    a, b = out[n].astype(np.float64), want.astype(np.float64)
                    with np.errstate(invalid="ignore"):  # (an equal inf, or NaN in both, is
                        diff = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0,
                                        np.abs(a - b))  # no difference; inf - inf is NaN)
                    err = np.max(diff, initial=0.0)
                    if not (err <= opts.get("maxerr", 1e-4)):
                        raise AssertionError(f"load_and_inference: test case {k}, output {n!r} "
                                             f"differs from the stored one by {err} (maxerr "
                                             f"{opts.get('maxerr', 1e-4)})")
            results.append(out)
        return results
    for data in inp_data_list:
        if isinstance(data, dict):
            results.append(graph.run(inp_dict=data))
        elif isinstance(data, (list, tuple)):
            results.append(graph.run(*data))
        else:
            results.append(graph.run(data))
    return results


# --------------------------------------------------------------------------------------------
# graph functions on megengine.utils.network_node's VarNodes and OpNodes
# --------------------------------------------------------------------------------------------
def set_priority_to_id(dest_vars):
    """Order the operators ``dest_vars`` depend on by id where dependencies leave a choice
    (`megengine.core.tensor.megbrain_graph.set_priority_to_id`)."""
    from ..core.tensor_megbrain_graph import set_priority_to_id as set_priority

    set_priority(dest_vars)


def get_dep_vars(var, var_type=None):
    """The VarNodes ``var`` (one or a list) depends on, itself included; ``var_type``: only
    those whose owner operator has that upstream C++ type name (`get_opr_type`, e.g.
    ``"Host2DeviceCopy"``, or a list of names)."""
    from .network import get_dep_vars as dep

    found = dep(var)
    if var_type is None:
        return found
    var_type = [var_type] if isinstance(var_type, str) else list(var_type)
    return [v for v in found if v.owner is not None and get_owner_opr_type(v) in var_type]


def get_owner_opr_inputs(var):
    """The inputs of the operator that computes ``var`` (as upstream's graph has them, see
    `get_opr_type`)."""
    return list(graph_operator(var.owner).inputs)


def get_owner_opr_type(var):
    """The upstream C++ type name of the operator that computes ``var``."""
    return get_opr_type(var.owner)


def get_opr_type(opr):
    """Upstream's C++ type name of operator ``opr`` (``"Elemwise"``, ``"ConvolutionForward"``,
    ``"PoolingForward"``, ``"ImmutableTensor"``, ...), what its graph level calls it; a
    `megengine.utils.network` node's ``type`` is the name at that level (``"Convolution"``).
    An engine operator without an upstream counterpart keeps its own name."""
    opr = opr.opr if isinstance(opr, GraphOperator) else opr
    if not isinstance(opr, OpNode):  # (upstream asserts)
        raise ArgumentKindError(f"get_opr_type: expected an operator (var.owner), got "
                                f"{type(opr).__name__} {opr!r}")
    return graph_type(opr)


def get_oprs_seq(outputs, prune_reshape=False, prune_immtensor=True):
    """The operators ``outputs`` depend on, in dependency and creation order (see
    `megengine.utils.network.get_oprs_seq`), as upstream's graph level shows them:
    `megengine.utils.network_node.GraphOperator` views whose ``type`` is the C++ type name and
    ``params`` a JSON string (the node itself is ``view.opr``)."""
    from .network import get_oprs_seq as seq
    return [graph_operator(o) for o in seq(outputs, prune_reshape, prune_immtensor)]


def graph_traversal(outputs):
    """(map_oprs, map_vars, var2oprs, opr2receivers, indegree2opr, opr2indegree) of the graph
    ``outputs`` depend on: operators (`get_oprs_seq`'s views) and vars by id; per var id, the
    (operator id, input index) that read it; per operator id, the ids of the operators that
    read its outputs; operators by their number of distinct readers, and the reverse map."""
    map_oprs, map_vars = collections.OrderedDict(), collections.OrderedDict()
    var2oprs = collections.defaultdict(list)
    opr2receivers = collections.defaultdict(list)
    for opr in get_oprs_seq(outputs, False, False):
        map_oprs[opr.id] = opr
        for idx, v in enumerate(opr.inputs):
            var2oprs[v.id].append((opr.id, idx))
            if v.owner is not None and opr.id not in opr2receivers[v.owner.id]:
                opr2receivers[v.owner.id].append(opr.id)
        for v in opr.outputs:
            map_vars[v.id] = v
    indegree2opr = collections.defaultdict(set)
    opr2indegree = {}
    for opr_id in map_oprs:
        n = len(opr2receivers[opr_id])
        indegree2opr[n].add(opr_id)
        opr2indegree[opr_id] = n
    return map_oprs, map_vars, var2oprs, opr2receivers, indegree2opr, opr2indegree


def replace_vars(dst, varmap):
    """New VarNodes for ``dst`` (a list) computed with each var of ``varmap`` {old: new}
    replaced; the operators on the way are copied, the original graph is left unchanged."""
    return _rebuild(dst, {id(k): v for k, v in varmap.items()}, {})


def replace_oprs(dst, oprmap):
    """New VarNodes for ``dst`` computed with each operator of ``oprmap`` {old: new} replaced
    (output ``i`` of ``old`` becomes output ``i`` of ``new``; nodes or `get_oprs_seq`'s views);
    the original graph is left unchanged."""
    oprmap = {(k.opr if isinstance(k, GraphOperator) else k):
              (v.opr if isinstance(v, GraphOperator) else v) for k, v in oprmap.items()}
    for old, new in oprmap.items():
        if len(old.outputs) != len(new.outputs):
            raise ValueError(f"replace_oprs: {old!r} has {len(old.outputs)} outputs, {new!r} "
                             f"{len(new.outputs)}")
    return _rebuild(dst, {}, {id(k): v for k, v in oprmap.items()})


def _rebuild(dst, varmap, oprmap):
    from .network import get_oprs_seq as seq

    new_var = dict(varmap)  # id(old var) -> var to use
    for opr in seq(dst, False, False):
        repl = oprmap.get(id(opr))
        if repl is not None:
            for v, r in zip(opr.outputs, repl.outputs):
                new_var.setdefault(id(v), r)
            continue
        ins = [new_var.get(id(v), v) for v in opr.inputs]
        dyn_vars = [new_var.get(id(v), v) for v in opr._dyn_vars]
        if all(a is b for a, b in zip(ins, opr.inputs)) and all(
                a is b for a, b in zip(dyn_vars, opr._dyn_vars)):
            continue
        from .network_node import make_opnode
        node = make_opnode(copy.copy(opr._op), opr._dyn, ins, dyn_vars, len(opr.outputs),
                           opr.outputs[0]._device, opr.name, [v.name for v in opr.outputs])
        node._multi = getattr(opr, "_multi", len(opr.outputs) != 1)
        for v, n in zip(opr.outputs, node.outputs):
            new_var.setdefault(id(v), n)
    return [new_var.get(id(v), v) for v in dst]

