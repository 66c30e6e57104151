"""Reading `TracedModule` pickles written by upstream MegEngine 1.6+ (``.tm`` files).

Upstream pickles its graphs under the class names this fork uses (``...traced_module.expr
.CallFunction``, ``...node.TensorNode``, ``...pytree.TreeDef``, ``...traced_module
.InternalGraph``), but with states of its own: an expr's arguments are its input nodes plus
``const_val`` (the constants, by position among the leaves of ``arg_def``), a TreeDef is
``(type, aux_data, children_defs)`` and every leaf a ``LeafDef`` (a constant keeps its value as
``const_val``), a builtin layer is wrapped in a ``_ModuleState``, an ``Apply`` keeps its op
descriptor's parameters (``opdef_state``) and a tensor node's device is a ``CompNode``.

Pickle builds those objects with this fork's classes, whose ``__setstate__`` keep upstream's
state as it is (a TreeDef marks it, ``kind == "upstream"``). A `TracedModule` whose state is
upstream's (it carries upstream's ``dump_info``) then converts its graphs here, in its own
``__setstate__``, when pickle has built every object they reach: this fork's TreeDefs,
arguments, op descriptors, devices, links and graph keys. What cannot be converted (a function
or a container type this engine lacks) raises ``pickle.UnpicklingError`` naming it.
"""
import importlib
import pickle
from collections import defaultdict

from ..module.module import Module
from .expr import (Apply, CallFunction, CallMethod, Constant, GetAttr, Input, ShapeOf, _is_node,
                   no_args_def)
from .node import ModuleNode, TensorNode
from .pytree import SUPPORTED_TYPE, TreeDef, tree_flatten

UPSTREAM = "upstream"  # the kind of a TreeDef that holds upstream's pickled state
_NO_AXIS = 7  # upstream's "no axis" of an op descriptor (MEGDNN_MAX_NDIM): None here


def is_upstream_state(state):
    """Whether a TracedModule's pickled state is upstream's (it records its dump info)."""
    return isinstance(state, dict) and "dump_info" in state


class _ModuleState:
    """Upstream's wrapper of a builtin layer inside a pickled TracedModule: the layer's class
    as ``(module, name)`` and its ``__dict__``."""

    def __setstate__(self, state):
        self.__dict__.update(state)

    def to_module(self):
        if "obj" not in self.__dict__:
            cls = _resolve(self.module, "module class")
            obj = cls.__new__(cls)
            obj.__setstate__(dict(self.state))
            self.obj = obj
        return self.obj


def _unpickling_error(what):
    return pickle.UnpicklingError(
        f"load: this TracedModule file (written by upstream MegEngine) uses {what}, which this "
        "engine does not provide; load it in upstream, save the module's state_dict, and trace "
        "the module here (megengine.traced_module.trace_module)")


def _resolve(ref, what):
    """The object ``(module, dotted name)`` names, or UnpicklingError naming it."""
    try:
        obj = importlib.import_module(ref[0])
        for part in ref[1].split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, TypeError, IndexError):
        raise _unpickling_error(f"the {what} {ref[0]}.{ref[1]}") from None
    return obj


# ----- TreeDefs -----

def treedef_state(tdef, state):
    """Keep upstream's pickled TreeDef/LeafDef state on ``tdef`` until its graph converts it."""
    leaf = not state["children_defs"] and "const_val" in state
    const = leaf and (state["const_val"] is not None or type(None) in tuple(state["type"]))
    for k, v in (("kind", UPSTREAM), ("type", state["type"] if not leaf else None),
                 ("aux", ("const", state["const_val"]) if const else
                  ("leaf", None) if leaf else ("node", state["aux_data"])),
                 ("children", tuple(state["children_defs"])),
                 ("num_leaves", state.get("num_leaves", 1 if leaf else 0))):
        object.__setattr__(tdef, k, v)


def _build(tdef, take):
    """The value upstream's ``tdef`` describes; ``take(is_const, const)`` gives each leaf."""
    if not isinstance(tdef, TreeDef) or tdef.kind != UPSTREAM:
        raise pickle.UnpicklingError(f"load: a malformed upstream TracedModule file: expected "
                                     f"upstream's TreeDef, got {tdef!r}")
    role, aux = tdef.aux
    if role != "node":
        return take(role == "const", aux)
    children = [_build(c, take) for c in tdef.children]
    t = tdef.type
    if t in (tuple, list):
        return t(children)
    if t is slice:
        return slice(*children)
    if isinstance(t, type) and issubclass(t, dict):
        out = t() if t is not defaultdict else defaultdict()
        out.update(zip(aux, children))
        return out
    if getattr(t, "__slots__", None) and tuple(aux or ()) == tuple(t.__slots__):  # QParams
        obj = t.__new__(t)
        for k, v in zip(aux, children):
            setattr(obj, k, v)
        return obj
    if t in SUPPORTED_TYPE:
        return SUPPORTED_TYPE[t].unflatten(children, aux)
    raise _unpickling_error(f"the container type {getattr(t, '__qualname__', t)!r} (register "
                            "it with megengine.traced_module.register_supported_type)")


def _from_leaves(tdef, leaves):
    """The value of ``tdef`` with ``leaves`` for its non-constant leaves, in order."""
    it = iter(leaves)
    return _build(tdef, lambda is_const, const: const if is_const else next(it))


def _node_tree(value, nodes, what):
    """This fork's TreeDef of ``value`` (nodes are its leaves), checking they are ``nodes``."""
    leaves, tdef = tree_flatten(value, _is_node)
    if len(leaves) != len(nodes) or any(a is not b for a, b in zip(leaves, nodes)):
        raise pickle.UnpicklingError(f"load: a malformed upstream TracedModule file: the {what} "
                                     "of an expr do not match its nodes")
    return tdef


# ----- exprs, nodes and graphs -----

def _device(dev):
    from ..device import canonical_device

    name = getattr(dev, "_pickled_name", dev)
    if name is None:
        return None
    try:
        return canonical_device(str(name))
    except (RuntimeError, ValueError):  # a GPU name on a machine without one: info only
        return str(name)


def _convert_node(node, graph):
    d = node.__dict__
    d.pop("_orig_name", None)
    d["_top_graph"] = graph
    d["users"] = []
    if isinstance(node, TensorNode):
        d["value"] = None
        d["_device"] = _device(d.get("_device"))
        if d.get("_shape") is not None:
            d["_shape"] = tuple(d["_shape"])
    elif isinstance(node, ModuleNode):
        mtype = d.get("module_type")
        if isinstance(mtype, tuple):
            try:
                mtype = _resolve(mtype, "module class")
            except pickle.UnpicklingError:
                mtype = None  # a user class of the program that saved it: set from the owner
        d["module_type"] = mtype
        d["_owner"] = None


def _convert_expr(expr, graph):
    d = expr.__dict__
    d["_top_graph"] = graph
    d.setdefault("_disable_remove", False)
    d.pop("version", None)
    const_val = d.pop("const_val", None) or []
    if isinstance(expr, (CallFunction, CallMethod)):
        if isinstance(expr, CallFunction) and isinstance(expr.func, tuple):
            expr.func = _resolve(expr.func, "function")
        leaves = list(expr.inputs)
        for idx, val in sorted(const_val, key=lambda p: p[0]):
            leaves.insert(idx, val)
        it = iter(leaves)
        args = _build(d["arg_def"], lambda is_const, const: next(it))
        d["arg_def"] = _node_tree(args, expr.inputs, "arguments")
        d["out_def"] = _node_tree(_from_leaves(d["out_def"], expr.outputs), expr.outputs,
                                  "results")
        return
    d["arg_def"] = d["out_def"] = None
    if isinstance(expr, GetAttr):
        d["arg_def"] = tree_flatten(((expr.inputs[0],), {}), _is_node)[1]
    elif isinstance(expr, Constant):
        if isinstance(expr.value, _ModuleState):
            expr.value = expr.value.to_module()
        d["arg_def"] = no_args_def()
    elif isinstance(expr, Apply):
        state = dict(d.pop("opdef_state"))
        op_type = state.pop("opdef_type")
        if op_type.__name__ == "GetVarShape" and state.get("axis") == _NO_AXIS:
            state["axis"] = None
        try:
            expr.op = op_type(**state)
        except (TypeError, ValueError) as e:
            raise _unpickling_error(f"the op {op_type.__name__}{state} ({e})") from None
        if op_type.__name__ == "GetVarShape" and state["axis"] is None:
            expr.__class__ = ShapeOf  # ``x.shape``, as this fork records it
    elif not isinstance(expr, Input):
        raise _unpickling_error(f"the expr kind {type(expr).__name__}")


def _convert_graph(graph):
    d = graph.__dict__
    for k in ("_watch_point", "_end_point", "_rst"):
        d.pop(k, None)
    d["_top_graph"] = None
    d.setdefault("_total_ids", None)
    ns = graph._namespace.__dict__
    if "_used_names" in ns:
        ns["used_names"] = ns.pop("_used_names")
    for node in graph._inputs:
        _convert_node(node, graph)
        node.expr._top_graph = graph
        node.expr.__dict__.pop("version", None)
        node.expr.__dict__.setdefault("arg_def", None)
        node.expr.__dict__.setdefault("out_def", None)
    for expr in graph._exprs:
        for node in expr.outputs:
            _convert_node(node, graph)
    for expr in graph._exprs:
        _convert_expr(expr, graph)
        for node in expr.outputs:
            node.expr = expr
        for node in expr.inputs:
            node.users.append(expr)


def convert_module_state(state):
    """This fork's TracedModule state from upstream's ``state`` (graphs converted in place)."""
    from .traced_module import _graph_key, _normalize_args

    state = dict(state)
    for k in ("dump_info", "watch_points", "watch_node_value", "end_points"):
        state.pop(k, None)
    for k, v in state.items():
        if isinstance(v, _ModuleState):
            state[k] = v.to_module()
    spec = state.get("argspec")
    state["_spec"] = spec if spec is not None and (len(spec.args) > 1 or spec.kwonlyargs) \
        else None
    state.setdefault("is_qat", False)
    state.setdefault("_is_top", False)
    graphs, outdefs = {}, {}
    for key, graph in state.get("argdef_graph_map", {}).items():
        _convert_graph(graph)
        inputs = list(graph._inputs)
        args, kwargs = _from_leaves(key, inputs)
        # (self is no key leaf here; keyword arguments in forward's order, not sorted)
        fork_key = _graph_key(*_normalize_args(state["_spec"], args[1:], kwargs))[1]
        graphs[fork_key] = graph
        out_value = _from_leaves(state["argdef_outdef_map"][key], graph._outputs)
        outdefs[fork_key] = _node_tree(out_value, graph._outputs, "results")
    state["argdef_graph_map"], state["argdef_outdef_map"] = graphs, outdefs
    state["_modules"] = [k for k in state.get("_modules", []) if k in state and
                         isinstance(state[k], (Module, list, tuple, dict))]
    return state


def link_module(module):
    """After an upstream TracedModule's state is set: point its ModuleNodes at their modules,
    the graphs of its traced submodules at the graph calling them, and number ids."""
    from .traced_module import TracedModule, _update_ref

    _update_ref(module)
    for sub in Module.modules(module):
        if not isinstance(sub, TracedModule):
            continue
        for graph in sub.argdef_graph_map.values():
            for node in graph.nodes(False):
                if isinstance(node, ModuleNode) and node.module_type is None:
                    node.module_type = type(node.owner)
            for expr in graph._exprs:
                if isinstance(expr, Constant) and isinstance(expr.value, Module):
                    expr.outputs[0]._owner = expr.value
                callee = expr.graph if isinstance(expr, CallMethod) else None
                if callee is not None:
                    callee._top_graph = graph
    for graph in module.argdef_graph_map.values():
        if graph._total_ids is None:
            ids = [n._id for n in graph.nodes()], [e._id for e in graph.exprs()]
            graph._total_ids = tuple(max(i, default=-1) + 1 for i in ids)
