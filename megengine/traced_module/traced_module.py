"""`trace_module` and `TracedModule`: a Module whose forward is a recorded graph.

``trace_module(module, *args, **kwargs)`` runs ``module``'s forward once with a `Tracer`
active and builds a `TracedModule` from what it saw: the same attributes (the same Parameter
and buffer objects, so state dicts and optimizers carry over), user submodules that were
called replaced by their own TracedModules, builtin layers kept as they are, and one graph per
argument structure (``argdef_graph_map``, with the output structure in ``argdef_outdef_map``).
Calling a TracedModule interprets its graph. As upstream, tensor attributes that forward never
reads are left out of the TracedModule.
"""
import copy
import copyreg
import inspect

from ..core.ops import ArgumentKindError
from ..core.tensor import Tensor
from ..module.module import Module, _access_structure
from .expr import CallMethod, Constant, Expr, GetAttr, Input, is_call_module
from .graph import InternalGraph, NameSpace  # (NameSpace: where upstream's pickles find it)
from .node import ModuleNode, Node, TensorNode
from .pytree import tree_flatten
from .tracer import (Tracer, _Scope, _assert_same, _check_module, is_builtin, rng_state,
                     set_rng_state)
from .utils import _convert_kwargs_to_args

__all__ = ["TracedModule", "trace_module"]


def _call_spec(module):
    """The argument spec calls of ``module`` are normalised with (forward's, without self
    bound), or None when forward takes anything (``*args, **kwargs`` only)."""
    if isinstance(module, TracedModule):
        return module.__dict__.get("_spec")
    try:
        spec = inspect.getfullargspec(type(module).forward)
    except TypeError:
        return None
    if len(spec.args) <= 1 and not spec.kwonlyargs:
        return None
    return spec


def _normalize_args(spec, args, kwargs):
    if spec is None:
        return tuple(args), dict(kwargs)
    return _convert_kwargs_to_args(spec, args, kwargs, is_bounded=True)


def _graph_key(args, kwargs):
    """(tensor leaves, TreeDef) of normalised arguments: the TreeDef selects the graph. As
    upstream, the keyword arguments and the values of dict arguments come in the order of
    their sorted keys (``d_0`` is the input of ``d``'s first key)."""
    return tree_flatten(_sorted_dicts((tuple(args), dict(kwargs))),
                        lambda x: isinstance(x, (Tensor, TensorNode)))


def _call_arguments(expr, nodes):
    """What a traced submodule's call ``expr`` hands its graph: for each of ``expr.graph``'s
    inputs (the module, then the tensors), the value among ``nodes`` (``expr.inputs`` or
    their copies, in their order) that it stands for."""
    args, kwargs = expr.arg_def.unflatten(nodes)
    spec = expr.inputs[0].owner.__dict__.get("_spec")
    return [args[0]] + _graph_key(*_normalize_args(spec, args[1:], kwargs))[0]


def _sorted_dicts(value):
    """``value`` with each plain dict in it (in tuples, lists and dicts) in sorted key order;
    keys that do not sort with each other (mixed types) keep their order."""
    if type(value) is dict:
        try:
            keys = sorted(value)
        except TypeError:
            keys = list(value)
        return {k: _sorted_dicts(value[k]) for k in keys}
    if type(value) in (tuple, list) and any(type(v) in (dict, tuple, list) for v in value):
        return type(value)([_sorted_dicts(v) for v in value])
    return value  # (no dict inside: as it is, the common case of every call)


def _node_list(nodes, what):
    """``nodes`` (a node, or an iterable of them) as a list of Nodes, or a TypeError naming
    what is not one."""
    if isinstance(nodes, Node):
        return [nodes]
    try:
        nodes = list(nodes)
    except TypeError:
        nodes = [nodes]
    for n in nodes:
        if not isinstance(n, Node):
            raise TypeError(f"{what}: expected nodes of the graph (get_node_by_id, ...), got "
                            f"{type(n).__name__} {n!r}")
    return nodes


class TracedModule(Module):
    """A Module whose forward interprets a traced graph (``self.graph``)."""

    def __init__(self, is_top=False, argdef_graph_map=None, argdef_outdef_map=None):
        super().__init__()
        object.__setattr__(self, "argdef_graph_map", argdef_graph_map or {})
        object.__setattr__(self, "argdef_outdef_map", argdef_outdef_map or {})
        object.__setattr__(self, "_is_top", is_top)
        object.__setattr__(self, "argspec", None)
        object.__setattr__(self, "_spec", None)
        object.__setattr__(self, "is_qat", False)

    @property
    def graph(self) -> InternalGraph:
        """The graph, when the module was traced with one argument structure."""
        graphs = list(self.argdef_graph_map.values())
        if len(graphs) != 1:
            raise ValueError(f"this TracedModule has {len(graphs)} graphs (one per argument "
                             "structure it was called with): pick one from argdef_graph_map")
        return graphs[0]

    def __reduce_ex__(self, protocol):
        # pickled (mge.save, pickle.dump) in upstream's layout, which upstream MegEngine loads
        # and so does this fork (`__setstate__`), losing nothing; a graph upstream cannot hold
        # (a PyTorchModule, an engine op of this fork) pickles in this fork's own layout
        from . import _upstream

        try:
            state = _upstream.module_state(self)
        except _upstream.NotExpressible:
            return super().__reduce_ex__(protocol)
        if type(self) in _CONTAINERS.values():  # upstream's module lists and dicts are
            state["_container"] = type(self).__name__  # TracedModules
            return copyreg._reconstructor, (TracedModule, object, None), state
        return copyreg.__newobj__, (type(self),), state

    def __copy__(self):
        result = type(self).__new__(type(self))
        result.__dict__.update(self.__dict__)
        return result

    def __setstate__(self, state):
        from . import _upstream

        upstream = _upstream.is_upstream_state(state)  # a file written by upstream MegEngine
        if upstream:
            state = _upstream.convert_module_state(state)
        container = state.pop("_container", None)
        if container is not None:  # a module list or dict, pickled as upstream's TracedModule
            self.__class__ = _CONTAINERS[container]
        super().__setstate__(state)
        if upstream:
            _upstream.link_module(self)
        # the loaders registered in megengine.traced_module.serialization update the exprs
        # (pickle has built every object this module's graphs reach by now)
        from .serialization import run_loaders

        run_loaders(self)
        # as upstream, a load numbers the exprs and nodes again, in graph order (an expr
        # inserted by graph surgery takes its place's id); the users lists came in the order
        # the file keeps
        for graph in self.argdef_graph_map.values():
            graph._reset_ids()

    def __deepcopy__(self, memo):
        # a copy is no load: the loaders bring a pickle written by older code up to date and
        # run when one is read, not again on copies of the loaded module (``optimize`` copies
        # it), as upstream's __deepcopy__ copies the state without __setstate__
        result = type(self).__new__(type(self))
        memo[id(self)] = result
        Module.__setstate__(result, copy.deepcopy(self.__getstate__(), memo))
        return result

    def _graph_for(self, args, kwargs):
        nargs, nkwargs = _normalize_args(self.__dict__.get("_spec"), args, kwargs)
        return self.argdef_graph_map.get(_graph_key(nargs, nkwargs)[1])

    # ----- watching values and stopping early (upstream's set_watch_points/set_end_points) -----
    def _all_graphs(self):
        seen, stack, out = set(), list(self.argdef_graph_map.values()), []
        while stack:
            g = stack.pop()
            if id(g) not in seen:
                seen.add(id(g))
                out.append(g)
                stack.extend(e.graph for e in g._exprs
                             if isinstance(e, CallMethod) and e.graph is not None)
        return out

    @property
    def watch_points(self):
        """The nodes `set_watch_points` gave (a list, empty when none)."""
        return [n for g in self._all_graphs() for n in g._watch_points]

    @property
    def end_points(self):
        """The nodes `set_end_points` gave (a list, empty when none)."""
        return [n for g in self.argdef_graph_map.values() for n in g._end_points]

    @property
    def watch_node_value(self):
        """``{node: value}`` of the nodes given to `set_watch_points`, from the latest call."""
        return self.__dict__.setdefault("_watch_node_value", {})

    def set_watch_points(self, nodes):
        """Keep the value each of ``nodes`` (of any graph of this module) takes while the
        module runs, in `watch_node_value`; a later call overwrites them."""
        nodes = _node_list(nodes, "set_watch_points")
        graphs = {id(g): g for g in self._all_graphs()}
        for n in nodes:
            if n.top_graph is None or id(n.top_graph) not in graphs:
                raise ValueError(f"set_watch_points: {n} is no node of this TracedModule's "
                                 "graphs; take nodes from its graph (get_node_by_id, ...)")
        self.clear_watch_points()
        for n in nodes:
            g = n.top_graph
            g._watch_points = tuple(g._watch_points) + (n,)
            g._watch_values = self.watch_node_value

    def clear_watch_points(self):
        """Stop keeping values (`set_watch_points`) and forget the kept ones."""
        for g in self._all_graphs():
            g._watch_points, g._watch_values = (), None
        self.watch_node_value.clear()

    def set_end_points(self, nodes):
        """Stop a call as soon as all of ``nodes`` (tensor nodes of the top graph) are
        computed, and return their values as a list, in this order."""
        nodes = _node_list(nodes, "set_end_points")
        tops = list(self.argdef_graph_map.values())
        for n in nodes:
            if not isinstance(n, TensorNode) or not any(n.top_graph is g for g in tops):
                raise ValueError(f"set_end_points: {n} is no tensor node of the top graph; "
                                 "as upstream, only the top graph's nodes can end a call")
        self.clear_end_points()
        for g in tops:
            g._end_points = tuple(n for n in nodes if n.top_graph is g)

    def clear_end_points(self):
        """Calls run to the end and return the module's result again (`set_end_points`)."""
        for g in self.argdef_graph_map.values():
            g._end_points = ()

    def forward(self, *args, **kwargs):
        fast = self._plain_call(args, kwargs)
        if fast is not None:  # tensors by position, one graph: no normalising, no lookup
            graph, outdef = fast
            if graph._end_points:
                return graph.interpret(self, *args)
            return outdef.unflatten(graph.interpret(self, *args))
        nargs, nkwargs = _normalize_args(self.__dict__.get("_spec"), args, kwargs)
        leaves, key = _graph_key(nargs, nkwargs)
        graph = self.argdef_graph_map.get(key)
        if graph is None:
            known = "; ".join(repr(k) for k in self.argdef_graph_map)
            raise ArgumentKindError(  # (upstream asserts: the error is both)
                f"this TracedModule was traced with the argument structure(s) {known}; it was "
                f"called with {key!r}: trace it again with arguments of this structure"
            )
        outs = graph.interpret(self, *leaves)
        if graph._end_points:
            return outs
        return self.argdef_outdef_map[key].unflatten(outs)

    def _plain_call(self, args, kwargs):
        """(graph, output TreeDef) when the call is tensors by position that the single graph
        takes as they are, else None (then the general path decides)."""
        graphs = self.argdef_graph_map
        if kwargs or len(graphs) != 1:
            return None
        for a in args:
            if not isinstance(a, Tensor):
                return None
        ((key, graph),) = graphs.items()
        if not key._plain_args or key.num_leaves != len(args):
            return None
        spec = self.__dict__.get("_spec")
        if spec is not None and (spec.kwonlyargs or len(args) < len(spec.args) - 1):
            return None  # defaults or keyword-only arguments would be filled in
        return graph, self.argdef_outdef_map[key]

    def __repr__(self):
        # a list or dict of modules prints as a TracedModule too: upstream traces those into
        # TracedModules (upstream 1.13 measured)
        text = super().__repr__()
        return "TracedModule" + text[len(type(self).__name__):]

    def flatten(self) -> "TracedModule":
        """A TracedModule with the same attributes whose graph has every traced submodule's
        graph inlined (its getattrs read from the top: ``block0.conv1``), compiled: steps no
        output needs (and that write nothing another call reads) are left out, as upstream."""
        new = TracedModule.__new__(TracedModule)
        new.__dict__.update(self.__dict__)
        new.__dict__["_modules"] = list(self.__dict__.get("_modules", []))
        graphs, outdefs = {}, {}
        for key, graph in self.argdef_graph_map.items():
            graphs[key] = _inline(graph, new)
            outdefs[key] = self.argdef_outdef_map[key]
        object.__setattr__(new, "argdef_graph_map", graphs)
        object.__setattr__(new, "argdef_outdef_map", outdefs)
        object.__setattr__(new, "_is_top", True)
        for graph in graphs.values():
            graph.compile()  # (as upstream's flatten: what no output needs goes)
            graph._reset_ids()
        return new


class _ModuleList(TracedModule):
    """A list of modules on a TracedModule (upstream turns such lists into module
    containers): items are attributes ``"0"``, ``"1"``, ...; indexing, ``len``, iteration and
    ``append`` work as on the list. It has no graph of its own."""

    def __init__(self, items=()):
        super().__init__()
        for item in items:
            self._put(str(len(self)), item)

    def _put(self, key, module):
        # the modules keep the names they had under the list (no renaming, no warning)
        self.__dict__[key] = module
        if key not in self._modules:
            self._modules.append(key)

    def __len__(self):
        n = 0
        while str(n) in self.__dict__:
            n += 1
        return n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"module list index {index} out of range ({n} items)")
        return self.__dict__[str(index % n)]

    def __setitem__(self, index, module):
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"module list index {index} out of range ({n} items)")
        setattr(self, str(index % n), module)

    def __iter__(self):
        return iter([self[i] for i in range(len(self))])

    def append(self, module):
        setattr(self, str(len(self)), module)


class _ModuleDict(TracedModule):
    """A dict of modules (str keys) on a TracedModule: the values are attributes named by
    their keys; ``[key]``, ``keys()``, ``values()``, ``items()``, ``len``, ``in`` work as on
    the dict, in the dict's order. It has no graph of its own."""

    def __init__(self, items=None):
        super().__init__()
        object.__setattr__(self, "_keys", [])
        for k, v in (items or {}).items():
            self._keys.append(k)
            _ModuleList._put(self, k, v)

    def __setitem__(self, key, module):
        if key not in self._keys:
            self._keys.append(key)
        setattr(self, key, module)

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self.__dict__[key]

    def __contains__(self, key):
        return key in self._keys

    def __len__(self):
        return len(self._keys)

    def __iter__(self):
        return iter(list(self._keys))

    def keys(self):
        return list(self._keys)

    def values(self):
        return [self[k] for k in self._keys]

    def items(self):
        return [(k, self[k]) for k in self._keys]


_CONTAINERS = {c.__name__: c for c in (_ModuleList, _ModuleDict)}


def _module_container(value):
    """A `_ModuleList`/`_ModuleDict` for a list/dict holding only modules (nested lists and
    dicts of modules included), else None."""
    if isinstance(value, list) and value:
        items = [v if isinstance(v, Module) else _module_container(v) for v in value]
        return _ModuleList(items) if all(i is not None for i in items) else None
    if isinstance(value, dict) and value and all(isinstance(k, str) and k.isidentifier()
                                                  for k in value):
        items = {k: v if isinstance(v, Module) else _module_container(v)
                 for k, v in value.items()}
        return _ModuleDict(items) if all(i is not None for i in items.values()) else None
    return None


def _set_leaf(module, key, value):
    def put(parent, last, _):
        if isinstance(parent, Module):
            setattr(parent, last, value)
        elif isinstance(parent, (list, dict)):
            parent[last] = value
        else:
            raise TypeError(f"cannot replace {key!r} inside a {type(parent).__name__}")

    _access_structure(module, key, put)


def _build(tracer, module, is_top, memo):
    """The TracedModule of a traced user module (shared modules give one TracedModule); of
    one never called (read through inside insert_exprs), a TracedModule without graphs
    holding what was read of it, as upstream's."""
    if id(module) in memo:
        return memo[id(module)]
    record = tracer.records.get(id(module))
    tm = TracedModule.__new__(TracedModule)
    memo[id(module)] = tm
    state = dict(vars(module))
    state.pop("forward", None)
    for k, v in list(state.items()):
        if isinstance(v, Tensor) and id(v) not in tracer.read_attrs and k != "_modules":
            del state[k]  # as upstream: a tensor forward never reads is not kept
        elif callable(v) and not isinstance(v, (Module, type)):
            # a function attribute (self.act = lambda x: ...): the graph holds what forward
            # called; upstream's TracedModule drops it too, and a lambda would make the
            # TracedModule impossible to save
            del state[k]
        else:
            state[k] = _replace_modules(tracer, v, memo)
            if k != "_modules":
                container = _module_container(state[k])
                if container is not None:  # as upstream: lists/dicts of modules -> modules
                    state[k] = container
    # as upstream, the submodules in the order forward first read them (its repr lists them
    # so); the ones it never read are dropped with their parameters, as upstream drops them
    modules = [k for k in state.get("_modules", []) if k in state]
    read = [k for k in tracer.read_order.get(id(module), ()) if k in modules]
    for k in modules:
        if k not in read and _holds_module(state[k]):
            del state[k]
    state["_modules"] = read + [k for k in modules if k not in read and k in state]
    tm.__dict__.update(state)
    spec = _call_spec(module)
    object.__setattr__(tm, "argdef_graph_map", record.graphs if record else {})
    object.__setattr__(tm, "argdef_outdef_map", record.outdefs if record else {})
    object.__setattr__(tm, "_is_top", is_top)
    object.__setattr__(tm, "_spec", spec)
    object.__setattr__(tm, "argspec", spec if is_top else None)
    from ..module.qat.module import QATModule

    # a traced QAT layer stays one call when the graph is flattened (as upstream)
    object.__setattr__(tm, "is_qat", isinstance(module, QATModule) or
                       bool(module.__dict__.get("is_qat", False)))
    return tm


def _holds_module(value):
    if isinstance(value, Module):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_module(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_module(v) for v in value.values())
    return False


def _replace_modules(tracer, value, memo):
    if isinstance(value, Module):
        return _build(tracer, value, False, memo) if id(value) in tracer.records else value
    if isinstance(value, (list, tuple)) and any(isinstance(v, (Module, list, tuple, dict))
                                                for v in value):
        items = [_replace_modules(tracer, v, memo) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)
    if isinstance(value, dict):
        items = {k: _replace_modules(tracer, v, memo) for k, v in value.items()}
        if all(items[k] is value[k] for k in value):
            return value
        out = type(value)()
        out.update(items)
        return out
    return value


def _update_ref(top, tracer=None, memo=None):
    """Point every ModuleNode at the module it stands for now (after building or loading)."""
    for module in Module.modules(top):  # (an attribute called "modules" may shadow it)
        if not isinstance(module, TracedModule):
            continue
        for graph in module.argdef_graph_map.values():
            graph._inputs[0]._owner = module
            for expr in graph._exprs:
                out = expr.outputs[0] if expr.outputs else None
                if isinstance(expr, GetAttr) and isinstance(out, ModuleNode):
                    try:
                        out._owner = _access_structure(expr.inputs[0].owner, expr.name)
                    except (AttributeError, KeyError, IndexError, ValueError, TypeError):
                        pass
                elif (isinstance(expr, Constant) and isinstance(expr.value, Module)
                      and tracer is not None and id(expr.value) in tracer.records):
                    expr.value = _build(tracer, expr.value, False, memo)
                    out._owner = expr.value


def trace_module(mod: Module, *args, **kwargs) -> TracedModule:
    """Trace ``mod``'s forward on ``args``/``kwargs`` into a `TracedModule`."""
    if not isinstance(mod, Module):
        raise ArgumentKindError(  # (upstream asserts)
            f"trace_module expects a megengine Module, got {type(mod).__name__}")
    tracer = Tracer()
    rng_start = rng_state() if tracer.values is not None else None  # (for the checker)
    with tracer:
        result = tracer.trace_forward(mod, args, kwargs)
    memo = {}
    tm = _build(tracer, mod, True, memo)
    _update_ref(tm, tracer, memo)
    for module in Module.modules(tm):  # (a user's attribute may be named `modules`)
        for graph in getattr(module, "argdef_graph_map", {}).values():
            graph._order_self_users()
    tm.graph._reset_ids()
    if tracer.values is not None and _check_module[0]:  # enable_expr_checker: the whole module
        expected = tree_flatten(result, lambda x: isinstance(x, Tensor))[0]
        rng_end = rng_state()
        set_rng_state(rng_start)  # (its draws from where the traced forward's started)
        try:
            got = tree_flatten(tm(*args, **kwargs), lambda x: isinstance(x, Tensor))[0]
        finally:
            set_rng_state(rng_end)
        _assert_same(f"the traced {type(mod).__name__}", got, expected)
    return tm


class _InsertExprs:
    """What ``graph.insert_exprs()`` returns: records calls on nodes while open, and puts
    the new exprs into the graph when it closes."""

    def __init__(self, graph, expr=None):
        self.graph = graph
        self.expr = expr
        self.tracer = None
        self.scope = None
        self.pending = []

    def __enter__(self):
        root = self.graph._root()
        if root._total_ids is not None:
            Node._set_next_id(root._total_ids[0])
            Expr._set_next_id(root._total_ids[1])
        self.tracer = Tracer(surgery=True)
        self.tracer.__enter__()
        owner = self.graph._inputs[0].owner
        self.scope = _Scope(self.graph, owner, self.graph._inputs[0], pending=self.pending)
        self.tracer.scopes.append(self.scope)
        return self

    def __exit__(self, exc_type, exc, tb):
        tracer = self.tracer
        tracer.__exit__(exc_type, exc, tb)
        for _, node in self.scope.values.values():  # values stood for nodes while recording
            if isinstance(node, TensorNode):
                node.value = None
        graph = self.graph
        if exc_type is not None:
            for expr in self.pending:
                for n in expr.inputs:
                    if expr in n.users:
                        n.users.remove(expr)
                for n in expr.outputs:
                    graph._namespace.release(n)
            return False
        memo = {}
        for expr in self.pending:  # user modules called or read through here become
            out = expr.outputs[0] if expr.outputs else None  # TracedModules, as upstream's
            if isinstance(expr, GetAttr) and isinstance(out, ModuleNode) \
                    and (id(out.owner) in tracer.records or not (
                        is_builtin(out.owner) or isinstance(out.owner, TracedModule))):
                built = _build(tracer, out.owner, False, memo)
                _set_leaf(expr.inputs[0].owner, expr.name, built)
                out._owner = built
        index = graph._exprs.index(self.expr) + 1 if self.expr is not None else 0
        positions = {id(e): i for i, e in enumerate(graph._exprs)}
        for expr in self.pending:
            for n in expr.inputs:
                if id(n.expr) in positions:
                    index = max(index, positions[id(n.expr)] + 1)
        graph._exprs[index:index] = self.pending
        root_module = graph._root()._inputs[0].owner
        _update_ref(root_module, tracer, memo)
        graph._set_total_ids()
        return False


def _inline(graph, owner):
    """A copy of ``graph`` (for ``owner``) with the graphs of traced submodules inlined.

    Names follow upstream's flatten, which inlines one level at a time: each step of an
    inlined graph is renamed, in its caller's namespace, after the module node it was called
    through (``b1_relu_out``); the caller's own results keep theirs but take a free name there
    too (``l0_out_1`` where the callee already holds ``l0_out``). The namespaces are copies of
    each graph's, one per call, as upstream's copy of the graph; a node is known in them by a
    key: the node it stands for at the outermost level. Last, every node takes a unique name
    in graph order."""
    flat = InternalGraph(graph._name, graph._qualname)
    self_expr = Input("self", ModuleNode, graph._qualname, owner=owner)
    node_map = {graph._inputs[0]: self_expr.outputs[0]}
    paths = {id(self_expr.outputs[0]): ""}
    for expr_in in [self_expr]:
        expr_in._top_graph = self_expr.outputs[0]._top_graph = flat
        flat._namespace.auto_name(expr_in)
    flat._inputs = [self_expr.outputs[0]]
    for node in graph._inputs[1:]:
        e = Input(node._name, TensorNode, node._qualname, shape=node.shape, dtype=node.dtype,
                  device=node.device)
        e._top_graph = e.outputs[0]._top_graph = flat
        flat._namespace.auto_name(e)
        flat._inputs.append(e.outputs[0])
        node_map[node] = e.outputs[0]

    keys, calls = {}, [0]  # (call number, id of a graph's node) -> its key; calls made

    def key_of(call, node):
        return keys.setdefault((call, id(node)), object())

    def namespace(g, call):
        ns = NameSpace(g._namespace.name, g._namespace.qualname)
        ns.used_names = {name: key_of(call, n) if isinstance(n, Node) else n
                         for name, n in g._namespace.used_names.items()}
        return ns

    def copy_exprs(g, nmap, call, own, caller=None, prefix="", results=None, kept=()):
        # g's steps into ``flat``; ``own``: g's namespace (this call's copy); ``caller``: the
        # calling graph's, where the steps are renamed after ``prefix`` but for the call's
        # results (``kept``); ``results``: id of a result of g -> (key, name) it stands for
        results = results or {}

        def rename(key, name):
            if caller is None:
                return name
            return caller.create_unique_name(name if key in kept else f"{prefix}_{name}", key)

        for expr in g._exprs:
            sub = expr.graph if is_call_module(expr) else None
            if sub is not None and not getattr(expr.inputs[0].owner, "is_qat", False):
                leaves = _call_arguments(expr, [nmap[i] for i in expr.inputs])
                sub_map = dict(zip(sub._inputs, leaves))
                outs = [results.get(id(o)) or (key_of(call, o), o._name) for o in expr.outputs]
                sub_results = {id(so): out for so, out in zip(sub._outputs, outs)
                               if so not in sub._inputs}
                calls[0] += 1
                copy_exprs(sub, sub_map, calls[0], namespace(sub, calls[0]), own,
                           nmap[expr.inputs[0]]._name, sub_results, {k for k, _ in outs})
                for o, so, (key, name) in zip(expr.outputs, sub._outputs, outs):
                    nmap[o] = sub_map[so]
                    if so in sub._inputs:  # the callee hands back its input: this result goes
                        rename(key, name)   # (as upstream, after its name took a place)
                    else:
                        nmap[o]._name = rename(key, nmap[o]._name)
                continue
            new = copy.copy(expr)
            new._id = Expr._next_id[0]
            Expr._next_id[0] += 1
            new.inputs, new.outputs = [], []
            new._top_graph = flat
            inputs = [nmap[i] for i in expr.inputs]
            if isinstance(expr, GetAttr) and id(inputs[0]) in paths:
                base = paths[id(inputs[0])]
                new.name = f"{base}.{expr.name}" if base else expr.name
                inputs = [flat._inputs[0]]
            new.add_inputs(inputs)
            names = []
            for o in expr.outputs:
                n = copy.copy(o)
                key, name = results.get(id(o)) or (key_of(call, o), o._name)
                renamed = isinstance(expr, GetAttr) or is_call_module(expr)  # from the path
                n.__dict__.update(_id=Node._next_id[0], expr=new, users=[], _top_graph=flat,
                                  _name=name, _made_as=None if renamed else o._orig_name)
                Node._next_id[0] += 1
                if isinstance(n, TensorNode):
                    n.value = None
                new.outputs.append(n)
                nmap[o] = n
                names.append(rename(key, name))
            if isinstance(expr, GetAttr) and isinstance(new.outputs[0], ModuleNode):
                paths[id(new.outputs[0])] = new.name
            flat._exprs.append(new)
            flat._namespace.auto_name(new)  # (qualnames; the names are set below)
            for n, name in zip(new.outputs, names):
                n._name = name

    copy_exprs(graph, node_map, 0, namespace(graph, 0))
    flat._outputs = [node_map[o] for o in graph._outputs]
    # as upstream, every node (inputs first) takes a unique name in graph order
    flat._namespace.used_names = {}
    for node in flat._inputs + [n for e in flat._exprs for n in e.outputs]:
        node._name = flat._namespace.create_unique_name(node._name, node)
    # getattrs of inlined modules are used by nothing now: drop them (only getattrs, so no
    # call with side effects is ever removed)
    outputs = set(id(o) for o in flat._outputs)
    while _drop_unused_getattrs(flat, outputs):
        pass  # dropping one may leave the getattr it read from unused
    flat._merge_getattr_exprs()
    _drop_unused_getattrs(flat, outputs)
    return flat


def _drop_unused_getattrs(graph, outputs):
    """Remove from ``graph`` the GetAttr exprs whose node nothing uses and that are not among
    ``outputs`` (node ids); True when one was removed."""
    dropped = False
    for expr in list(graph._exprs):
        if isinstance(expr, GetAttr) and not expr.outputs[0].users \
                and id(expr.outputs[0]) not in outputs:
            graph._exprs.remove(expr)
            expr.inputs[0].users.remove(expr)
            graph._namespace.release(expr.outputs[0])
            dropped = True
    return dropped
