"""Nodes: the values of a traced graph (a module, or a tensor), each made by one `Expr`.

A node knows the expr that produced it (``expr``), the exprs that read it (``users``), the
graph it belongs to (``top_graph``) and a name unique in that graph. `ModuleNode` stands for
a Module (``owner``); `TensorNode` for a tensor, with the shape and dtype seen while tracing.

Inside ``graph.insert_exprs()`` nodes can be used as the values they stand for: operators
and tensor methods on a `TensorNode`, attributes and calls of a `ModuleNode` are recorded into
the graph (see `megengine.traced_module.tracer`). Outside it they are plain descriptions.
"""
from typing import List

__all__ = ["Node", "ModuleNode", "TensorNode"]


class Node:
    """A value in a traced graph."""

    _next_id = [0]
    _format_spec = ""

    def __init__(self, expr, name="", qualname=""):
        self._id = Node._next_id[0]
        Node._next_id[0] += 1
        self.expr = expr
        self.users: List = []
        self._name = name
        self._qualname = qualname
        self._top_graph = None

    # ----- ids (upstream's counters, shared by every graph) -----
    @classmethod
    def _set_next_id(cls, i: int):
        Node._next_id[0] = int(i)

    @classmethod
    def _get_next_id(cls) -> int:
        return Node._next_id[0]

    @classmethod
    def _set_format_spec(cls, spec):
        previous, Node._format_spec = Node._format_spec, spec
        return previous

    # ----- pickling -----
    def __getstate__(self):
        # The links to the exprs that made and read a node are left out and rebuilt by its
        # graph when it loads (`InternalGraph.__setstate__`): pickled, they chain node ->
        # users -> outputs -> users ... through the whole graph, a few recursion levels per
        # expr (a 60-op forward passed Python's limit). An input keeps its Input expr, which
        # is in no graph's exprs.
        state = dict(self.__dict__)
        state.pop("users", None)
        if not getattr(state.get("expr"), "_is_input", False):
            state["expr"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "users" not in state:  # (pickles of earlier versions hold the links)
            self.users = []

    # ----- naming -----
    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, new_name: str):
        graph = self.top_graph
        assert graph is not None, "this node is in no graph: it cannot be renamed"
        used = graph._namespace.used_names
        assert used.get(new_name) is None or used.get(new_name) is self, (
            f"the name {new_name!r} is already used in graph {graph.name!r}: choose another"
        )
        graph._namespace.rename(self, new_name)

    @property
    def qualname(self) -> str:
        return self._qualname

    @property
    def _orig_name(self) -> str:
        """The name this node was made under, kept through renames (upstream's
        ``_orig_name``): a module call's output is ``<attribute path>_out``, so in a flattened
        graph it says which layer made it (``conv_bn.1_out``)."""
        return self.__dict__.get("_made_as") or self._name

    @property
    def top_graph(self):
        return self._top_graph

    def __repr__(self):
        # as upstream, str and repr: the name ("%3_x" while a graph prints with "{:i}")
        return self.__format__("")

    def __format__(self, spec):
        spec = spec or Node._format_spec
        if spec == "i":
            return f"%{self._id}_{self._name}"
        if spec == "p":
            graph = self.top_graph
            return f"{graph.name}_{self._name}" if graph is not None else self._name
        if spec == "ip":
            graph = self.top_graph
            full = f"{graph.name}_{self._name}" if graph is not None else self._name
            return f"%{self._id}_{full}"
        return self._name


class ModuleNode(Node):
    """A Module in a traced graph: the graph's ``self`` input, or a ``getattr`` of one."""

    def __init__(self, expr, name="", qualname="", module_type=None, owner=None):
        super().__init__(expr, name, qualname)
        self.module_type = module_type if module_type is not None else type(owner)
        self._owner = owner

    @property
    def owner(self):
        """The Module this node stands for."""
        return self._owner

    @property
    def graph(self):
        """The graph of the owner when it is a traced module with exactly one graph."""
        owner = self._owner
        return getattr(owner, "graph", None) if owner is not None else None

    def __getattr__(self, name):
        # Only reached for names a node does not have: inside insert_exprs they are the
        # owner's attributes (recorded as getattr exprs).
        if name.startswith("__") or name in ("_owner", "_name", "_top_graph", "expr", "users"):
            raise AttributeError(name)
        from . import tracer

        if tracer.in_surgery():
            return tracer._surgery_getattr(self, name)
        raise AttributeError(
            f"ModuleNode {self._name!r} has no attribute {name!r} (attributes of the module it "
            f"stands for are reached inside `with graph.insert_exprs():`)"
        )

    def __getstate__(self):
        # A class defined inside a function cannot be pickled by reference: such a node keeps
        # the type of the module it stands for now (a TracedModule) in the pickle instead.
        state = super().__getstate__()
        if not _findable(state.get("module_type")):
            owner_type = type(state.get("_owner"))
            state["module_type"] = owner_type if _findable(owner_type) else None
        return state

    def __call__(self, *args, **kwargs):
        from . import tracer

        if tracer.in_surgery():
            return tracer._surgery_call_module(self, args, kwargs)
        raise TypeError("'ModuleNode' object is not callable outside graph.insert_exprs()")


class TensorNode(Node):
    """A tensor in a traced graph, with the shape, dtype and device seen while tracing."""

    def __init__(self, expr, name="", qualname="", shape=None, dtype=None, qparams=None,
                 device=None):
        super().__init__(expr, name, qualname)
        self._shape = tuple(shape) if shape is not None else None
        self._dtype = dtype
        self._qparams = qparams
        self._device = device
        self.value = None  # a concrete tensor to use inside insert_exprs (never pickled)

    @property
    def shape(self):
        return self._shape

    @shape.setter
    def shape(self, shape):
        self._shape = tuple(shape)

    @property
    def dtype(self):
        return self._dtype

    @dtype.setter
    def dtype(self, dtype):
        self._dtype = dtype

    @property
    def qparams(self):
        return self._qparams

    @property
    def device(self):
        return self._device

    @property
    def ndim(self):
        return len(self._shape) if self._shape is not None else None

    def __getstate__(self):
        state = super().__getstate__()
        state["value"] = None
        return state


class NodeMixin:
    """Upstream's base of objects that stand for a node while tracing; its pickled TreeDefs
    name it among a leaf's types (nothing here derives from it)."""


def _findable(cls):
    """Whether pickle can find ``cls`` again by its module and qualified name."""
    import sys

    if not isinstance(cls, type):
        return False
    obj = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


def _surgery_method(name):
    def method(self, *args, **kwargs):
        from . import tracer

        if not tracer.in_surgery():
            raise TypeError(
                f"TensorNode.{name} is recorded only inside `with graph.insert_exprs():`; "
                "a node outside it describes a value, it holds none"
            )
        return tracer._surgery_call_method(name, self, args, kwargs)

    method.__name__ = name
    return method


def _comparison(name):
    # inside insert_exprs a recorded elementwise comparison, as upstream's; outside it nodes
    # compare (and hash) by identity, as graph edits use them as dict keys and list items
    surgery, identity = _surgery_method(name), getattr(object, name)

    def method(self, other):
        from . import tracer

        return surgery(self, other) if tracer.in_surgery() else identity(self, other)

    method.__name__ = name
    return method


for _n in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
    setattr(TensorNode, _n, _comparison(_n))
TensorNode.__hash__ = object.__hash__

# Operators and tensor methods a TensorNode offers inside insert_exprs (upstream's
# BUILTIN_ARRAY_METHOD, ``to``, ``detach`` and ``T``).
for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
            "and", "or", "xor", "lshift", "rshift"):
    for _prefix in ("", "r", "i"):
        _n = f"__{_prefix}{_op}__"
        setattr(TensorNode, _n, _surgery_method(_n))
for _n in ("__neg__", "__pos__", "__abs__", "__invert__", "__getitem__", "__setitem__", "astype",
           "reshape", "transpose", "flatten", "sum", "mean", "prod", "max", "min", "to",
           "detach", "_broadcast"):
    setattr(TensorNode, _n, _surgery_method(_n))
TensorNode.T = property(lambda self: self.transpose(), doc="``node.transpose()``")
