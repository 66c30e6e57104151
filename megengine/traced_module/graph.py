"""`InternalGraph`: the exprs of one traced forward, and how to search, run and edit them.

A graph's ``inputs`` are the ``self`` ModuleNode followed by the tensor arguments; its
``outputs`` are the nodes returned (their nesting is the module's ``argdef_outdef_map``).
``exprs()``/``nodes()`` look into the graphs of traced submodules too (``recursive``) and
return filters (``as_list()``, ``as_unique()``, narrowing by type, id or name).
Editing: ``insert_exprs()`` (record new calls on nodes), ``replace_node``, ``compile`` (drop
unused exprs), ``add_input_node``/``add_output_node``/``reset_outputs`` (top graph only).
"""
import builtins
import fnmatch
import keyword
import re
from typing import Dict, List, Optional, Sequence

from ..core.ops import ArgumentError, ArgumentKindError
from .expr import CallFunction, CallMethod, Constant, Expr, GetAttr, Input, op_name
from .node import ModuleNode, Node, TensorNode
from .pytree import tree_flatten

__all__ = ["InternalGraph", "NameSpace", "ExprFilter", "NodeFilter"]

# names a node never takes, as upstream: Python's builtins and keywords (``input``, ``filter``,
# ``max`` become ``input_1``, ...) and inf / nan
_TAKEN = frozenset(vars(builtins)) | frozenset(keyword.kwlist) | {"inf", "nan", "NoneType"}


TAKEN = "(taken by no node of this graph)"  # a used name's value where no node holds it


class NameSpace:
    """The names used in one graph: each node's name is unique in its graph."""

    __module__ = "megengine.traced_module.traced_module"  # where upstream's pickles find it
    __firstlineno__ = None  # Python 3.13+'s inspect reads it in the file of __module__

    def __init__(self, name, qualname):
        self.name = name
        self.qualname = qualname
        self.used_names = {}  # name -> node (None: reserved but free)

    def create_unique_name(self, name: str, node=None) -> str:
        if name in self.used_names and self.used_names[name] is node and node is not None:
            return name
        name = re.sub(r"[^0-9a-zA-Z_]+", "_", name) or "node"
        if name[0].isdigit():
            name = "_" + name
        while self.used_names.get(name) is not None or name in _TAKEN:
            # as upstream, a taken ``layer_1`` becomes ``layer_2``, a taken ``add_out``
            # ``add_out_1``
            numbered = re.match(r"(.*)_(\d+)$", name)
            name = f"{numbered.group(1)}_{int(numbered.group(2)) + 1}" if numbered \
                else f"{name}_1"
        self.used_names[name] = node
        return name

    def reserve(self, name: str) -> str:
        """A unique name made from ``name``, taken from now on though no node of this graph
        holds it (upstream's container reads and submodule graphs take names so)."""
        name = self.create_unique_name(name)
        self.used_names[name] = TAKEN
        return name

    def rename(self, node, new_name):
        if self.used_names.get(node._name) is node:
            self.used_names[node._name] = None
        node._name = self.create_unique_name(new_name, node)

    def release(self, node):
        if self.used_names.get(node._name) is node:
            self.used_names[node._name] = None

    def auto_name(self, expr):
        """Name (and qualify) the outputs of ``expr`` as upstream does: ``conv1``,
        ``conv1_out``, ``relu_out``, ``add_out``, ``const_tensor``."""
        qual = None
        if isinstance(expr, Input):
            base = expr.name
        elif isinstance(expr, GetAttr):
            base = expr.name.replace(".", "_")
            qual = f"{expr.inputs[0].qualname}.{expr.name}"
        elif isinstance(expr, Constant):
            base = expr.name or ("const_module" if isinstance(expr.outputs[0], ModuleNode)
                                 else "const_" + type(expr.value).__name__.lower())
        elif isinstance(expr, CallFunction):
            name = getattr(expr.func, "__name__", "func")
            base = name.lower() + "_out"
            qual = f"{self.qualname}.[func_{name}]"  # (upstream's qualnames of steps)
        elif isinstance(expr, CallMethod):
            if isinstance(expr.inputs[0], ModuleNode) and expr.method == "__call__":
                callee = expr.__dict__.pop("_callee_name", None)  # the read it was called by
                base = f"{callee or expr.inputs[0].name}_out"
                qual = f"{expr.inputs[0].qualname}.[out]"
            else:
                base = expr.method.strip("_") + "_out"
                qual = f"{self.qualname}.[method_{expr.method.strip('_')}]"
        else:
            name = op_name(expr.op).lower() if hasattr(expr, "op") else \
                type(expr).__name__.lower()
            base = name + "_out"
            qual = f"{self.qualname}.[def_{name}]"
        orig = None
        if isinstance(expr, GetAttr):
            orig = expr.name
        elif isinstance(expr, CallMethod) and isinstance(expr.inputs[0], ModuleNode) \
                and expr.method == "__call__":
            orig = f"{expr.inputs[0]._orig_name}_out"
        for node in expr.outputs:
            node._name = self.create_unique_name(node._name or base, node)
            if not node.__dict__.get("_made_as"):
                node._made_as = orig or node._name
            if not node._qualname:
                node._qualname = qual or f"{self.qualname}.[{node._name}]"


class _Filter:
    """A list of exprs or nodes, narrowed by chained calls."""

    def __init__(self, items):
        self._items = list(items)

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def as_list(self) -> list:
        return list(self._items)

    def as_dict(self) -> dict:
        return {x._id: x for x in self._items}

    def as_unique(self):
        if len(self._items) != 1:  # (upstream asserts: ArgumentError is both)
            raise ArgumentError(f"as_unique: {len(self._items)} elements match, expected exactly "
                                "1")
        return self._items[0]


class ExprFilter(_Filter):
    def call_function(self, func=None) -> "ExprFilter":
        return ExprFilter(e for e in self if isinstance(e, CallFunction)
                          and (func is None or e.func == func
                               or getattr(func, "__wrapped__", None) is e.func))

    def call_method(self, method: Optional[str] = None) -> "ExprFilter":
        return ExprFilter(e for e in self if isinstance(e, CallMethod)
                          and (method is None or e.method == method))

    def expr_id(self, expr_id: Sequence[int] = None) -> "ExprFilter":
        ids = _as_ids(expr_id)
        return ExprFilter(e for e in self if ids is None or e._id in ids)


class NodeFilter(_Filter):
    def type(self, owner_type) -> "NodeFilter":
        return NodeFilter(n for n in self if isinstance(n, ModuleNode)
                          and isinstance(n.module_type, type)
                          and issubclass(n.module_type, owner_type))

    def node_id(self, node_id: Sequence[int] = None) -> "NodeFilter":
        ids = _as_ids(node_id)
        return NodeFilter(n for n in self if ids is None or n._id in ids)

    def name(self, name: str = None, ignorecase: bool = True) -> "NodeFilter":
        if name is None:
            return NodeFilter(self)

        def full(n):
            graph = n.top_graph
            text = f"{graph.name}_{n._name}" if graph is not None else n._name
            return text.lower() if ignorecase else text

        pattern = name.lower() if ignorecase else name
        return NodeFilter(n for n in self if fnmatch.fnmatchcase(full(n), pattern))


def _as_ids(ids):
    if ids is None:
        return None
    return set([ids] if isinstance(ids, int) else ids)


def _expr_iter(graph, recursive, seen):
    # as upstream: each graph's Input exprs first (so ids and `_total_ids` agree)
    inputs = set()
    for node in graph._inputs:
        if id(node.expr) not in inputs:
            inputs.add(id(node.expr))
            yield node.expr
    for expr in graph._exprs:
        yield expr
        if recursive and isinstance(expr, CallMethod):
            sub = expr.graph
            if sub is not None and id(sub) not in seen:
                seen.add(id(sub))
                yield from _expr_iter(sub, True, seen)


def _node_iter(graph, recursive, seen):
    yield from graph._inputs
    for expr in graph._exprs:
        yield from expr.outputs
        if recursive and isinstance(expr, CallMethod):
            sub = expr.graph
            if sub is not None and id(sub) not in seen:
                seen.add(id(sub))
                yield from _node_iter(sub, True, seen)


_STATE = "(a module's state or a captured tensor)"  # what `_written_roots` names so


def _written_roots(expr, memo):
    """The tensors ``expr`` writes in place: nodes of its graph (each back through the writes
    that made it, `_written_root`), or `_STATE` where a traced submodule's call writes into
    an attribute or a captured tensor. ``memo``: id of a graph -> `_graph_writes`."""
    from .tracer import _in_place, _written_root

    if not isinstance(expr, CallMethod):
        return []
    if _in_place(expr.method) and expr.inputs:
        return [_written_root(expr.inputs[0])]
    graph = expr.graph if expr.method == "__call__" else None
    if graph is None:
        return []
    state, positions = _graph_writes(graph, memo)
    if not positions:
        return [_STATE] if state else []
    from .traced_module import _call_arguments

    args = _call_arguments(expr, expr.inputs)
    return [_STATE] * state + [_written_root(args[k]) for k in positions
                               if isinstance(args[k], Node)]


def _graph_writes(graph, memo):
    """(whether a call of ``graph`` writes into state or a captured tensor, the positions in
    ``graph._inputs`` of the inputs it writes into)."""
    if id(graph) not in memo:
        memo[id(graph)] = False, ()  # (a graph that calls itself: nothing from the recursion)
        roots = [r for e in graph._exprs for r in _written_roots(e, memo)]
        state = any(r is _STATE or isinstance(r.expr, (GetAttr, Constant)) for r in roots)
        inputs = {id(r) for r in roots if r is not _STATE and isinstance(r.expr, Input)}
        memo[id(graph)] = state, [k for k, n in enumerate(graph._inputs) if id(n) in inputs]
    return memo[id(graph)]


def _writes_out(graph, expr, memo, position):
    """Whether ``expr`` of ``graph`` makes a write that outlives it: into a tensor the call
    does not own (a graph input, an attribute, a captured tensor, after any earlier writes),
    also in the graph of a traced submodule it calls; there, also into a tensor of ``graph``'s
    own that it returns or reads after the call (tracing reads the node the call was given,
    through any later in-place writes into it). Kept by `InternalGraph.compile`;
    ``position``: id of an expr of ``graph`` -> its index."""
    from .tracer import _in_place, _write_outlives_call

    roots = _written_roots(expr, memo)
    if any(r is _STATE or _write_outlives_call(r) for r in roots):
        return True
    if not roots or _in_place(expr.method):
        return False  # (a direct write: tracing reads its result after it, as upstream)
    outputs = set(id(n) for n in graph._outputs)
    aliases = list(roots)
    for node in aliases:
        if id(node) in outputs:
            return True
        for user in node.users:
            if isinstance(user, CallMethod) and _in_place(user.method) \
                    and user.inputs[0] is node:
                aliases.extend(user.outputs)
            elif user is not expr and position.get(id(user), -1) > position[id(expr)]:
                return True
    return False


def order_users_as(node, order):
    """``node.users`` sorted as ``order`` lists the same exprs (a pickle's list); users it
    lacks keep their order after them."""
    rank = {}
    for k, e in enumerate(order):
        rank.setdefault(id(e), k)
    node.users.sort(key=lambda e: rank.get(id(e), len(order)))


def _check_output_nodes(outputs, what):
    """Raise unless every leaf of ``outputs`` is a TensorNode (or None); upstream asserts so
    for every leaf that is no Node."""
    bad = [x for x in tree_flatten(outputs)[0] if not (x is None or isinstance(x, TensorNode))]
    if bad:
        raise ArgumentKindError(f"{what}: doesn't support {type(bad[0]).__name__} {bad[0]!r} "
                                "among the outputs; give TensorNodes of this graph (nested in "
                                "tuples, lists, dicts)")


class InternalGraph:
    """The graph of one traced forward (see the module docstring)."""

    __module__ = "megengine.traced_module.traced_module"  # where upstream's pickles find it
    __firstlineno__ = None  # Python 3.13+'s inspect reads it in the file of __module__

    # TracedModule.set_watch_points / set_end_points (class defaults: graphs pickled before
    # these existed load with none)
    _watch_points = ()
    _watch_values = None
    _end_points = ()

    def __init__(self, name: str, qualname: str):
        self._exprs: List[Expr] = []
        self._inputs: List[Node] = []
        self._outputs: List[Node] = []
        self._namespace = NameSpace(name, qualname)
        self._name = name
        self._qualname = qualname
        self._top_graph = None
        self._total_ids = None

    def __getstate__(self):
        # its nodes leave their links out; the order of each node's users is kept as
        # positions in the exprs (upstream pickles the users lists: programs read them so)
        position = {id(e): k for k, e in enumerate(self._exprs)}
        users = [(n, [position[id(e)] for e in n.users if id(e) in position])
                 for n in self._nodes_read()]
        return dict(self.__dict__, _relink=True, _users=users)

    def __setstate__(self, state):
        relink = state.pop("_relink", False)
        users = state.pop("_users", None) if relink else None  # (else upstream's layout's)
        self.__dict__.update(state)
        if relink:  # each node's producing expr and its users, from the exprs in order
            for expr in self._exprs:
                for node in expr.outputs:
                    node.expr = expr
                for node in expr.inputs:
                    node.users.append(expr)
            if users is None:  # (pickles of earlier versions: the order upstream's tracer makes)
                self._order_self_users()
            for node, positions in users or ():
                order_users_as(node, [self._exprs[k] for k in positions])

    def _nodes_read(self):
        """The graph's inputs and every node its exprs read, each once."""
        seen, nodes = set(), []
        for n in list(self._inputs) + [n for e in self._exprs for n in e.inputs]:
            if id(n) not in seen:
                seen.add(id(n))
                nodes.append(n)
        return nodes

    def _order_self_users(self):
        """Put the getattrs of dotted names (``bs.0``, ``b0.l0``: a module read through a list,
        a dict or another module) last among the module node's users, in graph order, where
        upstream's tracer puts them (it merges their chains of getattrs after tracing and
        appends each merged one)."""
        if self._inputs and isinstance(self._inputs[0], ModuleNode):
            users = self._inputs[0].users
            dotted = [u for u in users if isinstance(u, GetAttr) and "." in u.name]
            if dotted:
                users[:] = [u for u in users if not any(u is d for d in dotted)] + dotted

    # ----- what it is -----
    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, new_name: str):
        parent = self.top_graph
        if parent is not None:
            used = parent._namespace.used_names
            assert used.get(new_name) is None, (
                f"the name {new_name!r} is already used in graph {parent.name!r}"
            )
        self._name = new_name
        self._namespace.name = new_name

    @property
    def qualname(self) -> str:
        return self._qualname

    @property
    def inputs(self) -> List[Node]:
        return self._inputs

    @property
    def outputs(self) -> List[Node]:
        return self._outputs

    @property
    def top_graph(self):
        return self._top_graph

    def _root(self):
        g = self
        while g._top_graph is not None:
            g = g._top_graph
        return g

    # ----- search -----
    def exprs(self, recursive=True) -> ExprFilter:
        return ExprFilter(_expr_iter(self, recursive, {id(self)}))

    def nodes(self, recursive=True) -> NodeFilter:
        return NodeFilter(_node_iter(self, recursive, {id(self)}))

    def get_function_by_type(self, func=None, recursive=True) -> ExprFilter:
        return self.exprs(recursive).call_function(func)

    def get_method_by_type(self, method: str = None, recursive=True) -> ExprFilter:
        return self.exprs(recursive).call_method(method)

    def get_expr_by_id(self, expr_id=None, recursive=True) -> ExprFilter:
        return self.exprs(recursive).expr_id(expr_id)

    def get_module_by_type(self, module_cls, recursive=True) -> NodeFilter:
        return self.nodes(recursive).type(module_cls)

    def get_node_by_id(self, node_id=None, recursive=True) -> NodeFilter:
        return self.nodes(recursive).node_id(node_id)

    def get_node_by_name(self, name: str = None, ignorecase: bool = True,
                         recursive=True) -> NodeFilter:
        """Nodes whose full name (``<graph name>_<node name>``) matches the glob ``name``."""
        return self.nodes(recursive).name(name, ignorecase)

    def get_dep_exprs(self, nodes) -> List[Expr]:
        """The exprs that the values of ``nodes`` depend on, in upstream's order: nodes taken
        from the end of a queue that holds each node once (until it is taken) and is never
        given one taken already."""
        if isinstance(nodes, Node):
            nodes = [nodes]
        result, queue = [], list(nodes)
        queued, taken = {id(n) for n in queue}, set()
        while queue:
            node = queue.pop()
            queued.discard(id(node))
            taken.add(id(node))
            expr = node.expr
            if expr not in result:
                result.append(expr)
            for i in expr.inputs:
                if id(i) not in queued and id(i) not in taken:
                    queue.append(i)
                    queued.add(id(i))
        return result

    # ----- running -----
    def interpret(self, *inputs):
        """Run the graph on ``inputs`` (the module first, then the tensors); returns the
        flat list of output values."""
        if len(inputs) != len(self._inputs):  # (upstream's eval asserts)
            raise ArgumentKindError(f"graph {self._name} takes {len(self._inputs)} inputs (self "
                                    f"and {len(self._inputs) - 1} tensors), got {len(inputs)}")
        env = {}
        for n, v in zip(self._inputs, inputs):
            env[n] = v
        watch, ends = self._watch_points, self._end_points
        for expr in self._exprs:
            try:
                values = expr.interpret(*[env[i] for i in expr.inputs])
            except KeyError as e:
                raise RuntimeError(f"graph {self._name}: {expr!r} reads {e.args[0]}, which no "
                                   "earlier expr makes (edit the graph in order)") from None
            if len(values) != len(expr.outputs):
                raise RuntimeError(
                    f"graph {self._name}: {expr!r} gave {len(values)} outputs, the graph "
                    f"recorded {len(expr.outputs)} (the call returns a different structure "
                    "than while tracing)"
                )
            for n, v in zip(expr.outputs, values):
                env[n] = v
                if n in watch:
                    self._watch_values[n] = v
            if ends and all(n in env for n in ends):
                return [env[n] for n in ends]  # set_end_points: stop as soon as all are made
        return [env[n] for n in self._outputs]

    def eval(self, *inputs):
        """Run the graph on the tensors for ``inputs[1:]`` (``self`` is the owner)."""
        return self.interpret(self._inputs[0].owner, *inputs)

    # ----- editing -----
    def insert_exprs(self, expr: Optional[Expr] = None):
        """``with graph.insert_exprs():`` records calls on this graph's nodes (``F.neg(node)``,
        ``node + 1``, ``self_node.sub(node)``) and inserts them after ``expr`` (default:
        after the last expr their inputs need)."""
        if expr is not None and expr.top_graph is not self:
            raise ValueError(f"{expr!r} is not in graph {self._name}")
        from .traced_module import _InsertExprs

        return _InsertExprs(self, expr)

    def replace_node(self, repl_dict: Dict[Node, Node]):
        """Let every user of each key node that comes after the value node's expr read the
        value node instead (graph outputs included)."""
        for node, repl in list(repl_dict.items()):
            if type(node) is not type(repl):
                raise TypeError(f"replace_node: {node} is a {type(node).__name__}, {repl} a "
                                f"{type(repl).__name__}: replace a node by one of its kind")
            if repl.top_graph is not self:
                raise ValueError(f"replace_node: {repl} is not in graph {self._name}")
            for i, n in enumerate(self._outputs):
                if n is node:
                    self._outputs[i] = repl
            start = -1 if isinstance(repl.expr, Input) else self._exprs.index(repl.expr)
            deps = self.get_dep_exprs(repl)
            for user in list(node.users):
                if user in self._exprs and self._exprs.index(user) <= start:
                    continue  # before the replacement exists: keep the old value
                if user in deps:
                    continue  # the replacement is computed from this user: no loop
                user.inputs = [repl if i is node else i for i in user.inputs]
                node.users.remove(user)
                repl.users.append(user)

    def compile(self):
        """Merge repeated getattrs and delete exprs that neither the outputs nor a write the
        call makes outside itself depend on: ``self.calls += 1``, ``x[0] = v`` of an input,
        ``self.w.set_value(v)``, and a traced submodule's call whose graph makes one, stay
        (`_writes_out`; earlier versions of this fork deleted them, so the state stopped
        changing)."""
        self._merge_getattr_exprs()
        memo, position = {}, {id(e): k for k, e in enumerate(self._exprs)}
        kept = list(self._outputs) + [e.outputs[0] for e in self._exprs
                                      if e.outputs and _writes_out(self, e, memo, position)]
        needed = set(id(e) for e in self.get_dep_exprs(kept))
        kept = []
        for expr in self._exprs:
            if id(expr) in needed or expr._disable_remove:
                kept.append(expr)
                continue
            for n in expr.inputs:
                if expr in n.users:
                    n.users.remove(expr)
            for n in expr.outputs:
                self._namespace.release(n)
        self._exprs[:] = kept

    def _merge_getattr_exprs(self):
        first = {}
        for expr in self._exprs:
            if not isinstance(expr, GetAttr):
                continue
            key = (id(expr.inputs[0]), expr.name)
            if key not in first:
                first[key] = expr.outputs[0]
                continue
            keep, dup = first[key], expr.outputs[0]
            for user in list(dup.users):
                user.inputs = [keep if i is dup else i for i in user.inputs]
                keep.users.append(user)
            dup.users.clear()
            self._outputs[:] = [keep if n is dup else n for n in self._outputs]

    def _owner_and_key(self, what):
        module = self._inputs[0].owner
        if not getattr(module, "_is_top", False):
            raise ValueError(f"{what} edits only the top graph of a traced module")
        for key, graph in module.argdef_graph_map.items():
            if graph is self:
                return module, key
        raise ValueError(f"{what}: this graph is not one of its module's graphs")

    def _new_input_node(self, name, shape, dtype):
        """A tensor input node of this graph, named ``name`` or a free variant of it (not yet
        among the graph's inputs)."""
        expr = Input(name, TensorNode, shape=shape, dtype=dtype)
        node = expr.outputs[0]
        node._name = self._namespace.create_unique_name(name, node)
        node._qualname = f"{self._qualname}.[{node._name}]"
        expr._top_graph = node._top_graph = self
        return node

    def add_input_node(self, shape, dtype="float32", name="args") -> TensorNode:
        """Append a tensor input (the last positional argument) and return its node."""
        module, key = self._owner_and_key("add_input_node")
        node = self._new_input_node(name, shape, dtype)
        args, kwargs = key.unflatten(self._inputs[1:])
        leaves, new_key = tree_flatten((tuple(args) + (node,), kwargs),
                                       lambda x: isinstance(x, TensorNode))
        self._inputs[1:] = leaves
        module.argdef_graph_map[new_key] = module.argdef_graph_map.pop(key)
        module.argdef_outdef_map[new_key] = module.argdef_outdef_map.pop(key)
        self._set_total_ids()
        return node

    def reset_inputs(self, *args, **kwargs):
        """Make the top graph take new arguments: one input node per tensor of ``args`` and
        ``kwargs`` (example values: their shapes and dtypes), in that structure, in place of
        the old inputs; returns the new nodes. The graph's exprs still read the old input
        nodes: point them at the new ones (`replace_node`, then `compile`), as upstream's."""
        from ..core.tensor import Tensor

        module, key = self._owner_and_key("reset_inputs")
        every, _ = tree_flatten((args, kwargs), lambda x: not isinstance(x, (tuple, list, dict)))
        bad = [type(v).__name__ for v in every if not isinstance(v, Tensor)]
        if bad:
            raise TypeError(f"reset_inputs takes example Tensors (their shapes and dtypes make "
                            f"the new inputs), got {', '.join(bad)}")
        leaves, new_key = tree_flatten((args, kwargs), lambda x: isinstance(x, Tensor))
        nodes = [self._new_input_node("args", tuple(v.shape), v.dtype) for v in leaves]
        self._inputs[1:] = nodes
        module.argdef_graph_map[new_key] = module.argdef_graph_map.pop(key)
        module.argdef_outdef_map[new_key] = module.argdef_outdef_map.pop(key)
        self._set_total_ids()
        return nodes

    def reset_outputs(self, outputs):
        """Make ``outputs`` (nodes, possibly nested in tuples, lists, dicts) the result."""
        module, key = self._owner_and_key("reset_outputs")
        _check_output_nodes(outputs, "reset_outputs")
        self._set_outputs(outputs, module, key)

    def _set_outputs(self, outputs, module, key):
        leaves, out_def = tree_flatten(outputs, lambda x: isinstance(x, TensorNode))
        self._outputs[:] = leaves
        module.argdef_outdef_map[key] = out_def

    def add_output_node(self, node: TensorNode):
        """The result becomes ``(previous result, node)``."""
        module, key = self._owner_and_key("add_output_node")
        _check_output_nodes(node, "add_output_node")
        previous = module.argdef_outdef_map[key].unflatten(self._outputs)
        self._set_outputs((previous, node), module, key)  # (previous: a traced constant kept)

    # ----- ids -----
    def _reset_ids(self):
        """Number exprs and nodes 0, 1, ... as upstream does (``_total_ids``: the next): a
        graph's inputs first (their Input exprs count), then each expr and its outputs, a
        called submodule's graph right after its call; so a node's id is the id of the expr
        that makes it, and upstream's guide's ids (resnet18's avg_pool2d input %136) hold."""
        counts = [0, 0]  # nodes, exprs
        seen = set()

        def number(graph):
            for node in graph._inputs:
                if isinstance(node.expr, Input) and id(node.expr) not in seen:
                    seen.add(id(node.expr))
                    node.expr._id = counts[1]
                    counts[1] += 1
                if id(node) not in seen:
                    seen.add(id(node))
                    node._id = counts[0]
                    counts[0] += 1
            for expr in graph._exprs:
                if id(expr) in seen:
                    continue
                seen.add(id(expr))
                expr._id = counts[1]
                counts[1] += 1
                for node in expr.outputs:
                    if id(node) not in seen:
                        seen.add(id(node))
                        node._id = counts[0]
                        counts[0] += 1
                sub = expr.graph if isinstance(expr, CallMethod) else None
                if sub is not None and id(sub) not in seen:
                    seen.add(id(sub))
                    number(sub)

        number(self)
        self._total_ids = tuple(counts)

    def _set_total_ids(self):
        root = self._root()
        root._total_ids = (Node._get_next_id(), Expr._get_next_id())

    # ----- printing -----
    def __format__(self, spec=""):
        previous = Node._set_format_spec(spec)
        try:
            # as upstream, an empty body still has its line
            body = "\n\t".join(repr(e) for e in self._exprs)
            name = f"{self._name}.Graph" if self._name else ""
            head = f"{name} ({', '.join(str(i) for i in self._inputs)}) {{"
            outs = ", ".join(str(o) for o in self._outputs)
            return f"{head}\n\t{body}\n\treturn {outs}\n}}"
        finally:
            Node._set_format_spec(previous)

    def __repr__(self):
        return self.__format__()
