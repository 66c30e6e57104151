"""Flattening of nested arguments and results (tuples, lists, dicts) into leaves and a `TreeDef`.

A graph's inputs, an expr's arguments and a module's outputs are nested Python values. The
traced graph sees only their *leaves* (tensors, modules, nodes); everything else (ints, strings,
``None``, dtypes) is a constant that the `TreeDef` keeps, so that ``unflatten`` rebuilds
the same structure from new leaves. Two TreeDefs are equal when their structures and constants
are: a traced module keeps one graph per argument structure (`TracedModule.argdef_graph_map`).
"""
from collections import OrderedDict, namedtuple

import numpy as np

from ..core._trace_option import Shape

__all__ = ["TreeDef", "LeafDef", "tree_flatten", "register_supported_type", "SUPPORTED_TYPE",
           "NodeType"]

_LEAF = "leaf"
_CONST = "const"
_CONST_LEAF = "const_leaf"  # a leaf whose value the TreeDef also keeps (upstream's const leaf)
# how a container type is looked inside: ``flatten(value) -> (children, aux data)`` and
# ``unflatten(children, aux data) -> value`` (upstream's names, which tools read)
NodeType = namedtuple("NodeType", ["flatten", "unflatten"])
SUPPORTED_TYPE = {}  # container type -> its NodeType


def register_supported_type(type, flatten_fn=None, unflatten_fn=None):
    """Let ``type`` be looked inside: ``flatten_fn(value) -> (children, aux)`` and
    ``unflatten_fn(children, aux) -> value``; ``aux`` must be picklable and comparable. Without
    the two functions ``type`` is a leaf, as upstream registers it: its values are kept as
    constants of the graph, as values of every other type already are here. The parameter names
    are upstream's (earlier versions of this fork named them ``type_``, ``flatten`` and
    ``unflatten``)."""
    if (flatten_fn is None) != (unflatten_fn is None):
        raise TypeError(f"register_supported_type({type.__name__}): give both flatten_fn and "
                        f"unflatten_fn (a container type) or neither (a leaf type)")
    if flatten_fn is not None:
        SUPPORTED_TYPE[type] = NodeType(flatten_fn, unflatten_fn)


register_supported_type(tuple, lambda v: (list(v), None), lambda c, _: tuple(c))
register_supported_type(list, lambda v: (list(v), None), lambda c, _: list(c))
# ``x.shape`` while tracing (its sizes are traced tensors: a call given it follows the input)
register_supported_type(Shape, lambda v: (list(v), None), lambda c, _: Shape(c))
# a slice is looked into, as upstream's: ``x[:n - 1]`` with ``n`` a traced size reads the
# size's node, so the traced module follows the input's shape
register_supported_type(slice, lambda v: ([v.start, v.stop, v.step], None),
                        lambda c, _: slice(*c))


def _flatten_dict(v):
    """A dict's values and keys in upstream's order: sorted keys (an OrderedDict keeps its own
    order); keys that do not sort (an int beside a str), which upstream refuses, in insertion
    order."""
    try:
        keys = sorted(v)
    except TypeError:
        keys = list(v)
    return [v[k] for k in keys], keys


register_supported_type(dict, _flatten_dict, lambda c, keys: dict(zip(keys, c)))
register_supported_type(OrderedDict, lambda v: ([v[k] for k in v], list(v)),
                        lambda c, keys: OrderedDict(zip(keys, c)))


def _namedtuple_type(value):
    t = type(value)
    return t if isinstance(value, tuple) and hasattr(t, "_fields") else None


def _const_equal(a, b):
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    if type(a).__module__.startswith("cupy"):  # (its == is elementwise, bool() of it raises)
        return a.shape == b.shape and a.dtype == b.dtype and bool((a == b).all())
    try:
        return bool(a == b)
    except Exception:  # a constant whose == is not a plain truth value: identity decides
        return False


class TreeDef:
    """The shape of a nested value: containers, constants and where the leaves go."""

    __slots__ = ("kind", "type", "aux", "children", "num_leaves", "_hash", "_plain_args",
                 "_leaf_type")

    def __init__(self, kind, type_=None, aux=None, children=(), leaf_type=None):
        self.kind = kind  # "leaf", "const", "const_leaf", "namedtuple" or "node"
        self.type = type_
        self.aux = aux  # a node: the container's aux data; a const: the value
        self.children = tuple(children)
        # a leaf: its value's type (or, unpickled, its name), for printing only: not compared
        self._leaf_type = leaf_type
        self.num_leaves = ((1 if kind in (_LEAF, _CONST_LEAF) else 0)
                           + sum(c.num_leaves for c in self.children))
        self._finish()

    def _finish(self):
        # Constants are left out of the hash (they may be unhashable); equality compares them.
        # Computed once from the children's: graphs are looked up by TreeDef on every call.
        self._hash = hash((self.kind, self.type if self.kind not in (_CONST, _CONST_LEAF)
                           else type(self.aux),
                           tuple(self.aux) if isinstance(self.aux, list) else None,
                           tuple(c._hash for c in self.children)))
        # ``((leaf, leaf, ...), {})``: the common argument structure, unflattened without a walk
        self._plain_args = (
            self.kind == "node" and self.type is tuple and len(self.children) == 2
            and self.children[0].type is tuple and self.children[1].type is dict
            and not self.children[1].children
            and all(c.kind == _LEAF for c in self.children[0].children))

    def unflatten(self, leaves):
        """Rebuild the value with ``leaves`` in place of the original leaves."""
        if self._plain_args and len(leaves) == self.num_leaves:
            return tuple(leaves), {}
        leaves = list(leaves)
        if len(leaves) != self.num_leaves:
            raise ValueError(
                f"unflatten: this structure holds {self.num_leaves} leaves, got {len(leaves)}"
            )
        it = iter(leaves)
        return self._build(it)

    def _build(self, it):
        if self.kind in (_LEAF, _CONST_LEAF):
            return next(it)
        if self.kind == _CONST:
            return self.aux
        children = [c._build(it) for c in self.children]
        if self.kind == "namedtuple":
            return self.type(*children)
        return SUPPORTED_TYPE[self.type].unflatten(children, self.aux)

    @property
    def aux_data(self):  # upstream's names of a container's aux data and children
        return self.aux

    @property
    def children_defs(self):
        return self.children

    def __eq__(self, other):
        if self is other:
            return True
        if not isinstance(other, TreeDef) or self._hash != other._hash or \
                self.kind != other.kind or self.type != other.type:
            return False
        if self.kind in (_CONST, _CONST_LEAF):
            return _const_equal(self.aux, other.aux)
        if self.aux != other.aux or len(self.children) != len(other.children):
            return False
        return all(a == b for a, b in zip(self.children, other.children))

    def __hash__(self):
        return self._hash

    def __getstate__(self):
        # the hash is not stored: hashes of types differ between processes
        state = {k: getattr(self, k) for k in ("kind", "type", "aux", "children", "num_leaves")}
        if self.kind == _LEAF:
            state["_leaf_type"] = _leaf_name(self._leaf_type)  # (a local class would not pickle)
        return state

    def __setstate__(self, state):
        object.__setattr__(self, "_leaf_type", None)
        if "children_defs" in state:  # upstream's TreeDef, converted with its graph
            from ._upstream import treedef_state

            treedef_state(self, state)
        else:
            for k, v in state.items():
                object.__setattr__(self, k, v)
        self._finish()

    def __repr__(self):
        # as upstream prints its TreeDefs: ``((Module, Tensor, 2.0), {'k':Tensor})``
        if self.kind == _LEAF:
            return _leaf_name(self._leaf_type)
        if self.kind in (_CONST, _CONST_LEAF):
            return str(self.aux)
        t = self.type if isinstance(self.type, type) else type(None)
        if issubclass(t, dict):
            return "{" + ", ".join(f"{k!r}:{c!r}" for k, c in zip(self.aux, self.children)) + "}"
        inner = ", ".join(repr(c) for c in self.children)
        if issubclass(t, list):
            return f"[{inner}]"
        if issubclass(t, tuple):
            return f"({inner})"
        if isinstance(self.aux, (list, tuple)) and len(self.aux) == len(self.children):
            inner = ", ".join(f"{k!r}={c!r}" for k, c in zip(self.aux, self.children))
        return f"{getattr(self.type, '__name__', self.type)}({inner})"


def _leaf_name(leaf_type):
    """How upstream prints a leaf of this type: ``Module``, ``Tensor`` or the type's name."""
    if leaf_type is None or isinstance(leaf_type, str):
        return leaf_type or "Tensor"
    from ..module import Module
    from .node import ModuleNode

    if issubclass(leaf_type, (Module, ModuleNode)):
        return "Module"
    from ..tensor import Tensor
    from .node import TensorNode

    if issubclass(leaf_type, (Tensor, TensorNode)):
        return "Tensor"
    return leaf_type.__name__


class LeafDef(TreeDef):
    """The TreeDef of a leaf (upstream's class name, which tools test with isinstance)."""

    __slots__ = ()


class ArgsIndex:
    """Upstream's marker of an argument's position (its pickled LeafDefs name the class)."""

    def __init__(self, index=0, name=""):
        self.index = index
        self.name = name

    def __repr__(self):
        return self.name


def tree_flatten(value, is_leaf=None, *, is_const_leaf=None):
    """(leaves, TreeDef) of ``value``.

    ``is_leaf(x)`` picks the leaves; other values that are not supported containers become
    constants of the TreeDef (the form the tracer uses). Without ``is_leaf``, as upstream's
    ``tree_flatten(values, is_const_leaf=...)``: every value that is not a supported container
    is a leaf, and a leaf for which ``is_const_leaf(x)`` holds (default: anything but a Tensor
    or a Module) also keeps its value in the TreeDef, so that two structures holding different
    constants compare unequal.
    """
    leaves = []
    if is_leaf is None:
        if is_const_leaf is None:
            is_const_leaf = _not_tensor_or_module
    elif is_const_leaf is not None:
        raise TypeError("tree_flatten: give is_leaf (the leaves; the rest are constants) or "
                        "is_const_leaf (every non-container is a leaf), not both")

    def walk(v):
        if is_leaf is not None and is_leaf(v):
            leaves.append(v)
            return LeafDef(_LEAF, leaf_type=type(v))
        nt = _namedtuple_type(v)
        if nt is not None:
            return TreeDef("namedtuple", nt, None, [walk(c) for c in v])
        # (a Shape subclass, a traced ``x.shape``, is a Shape: what a traced call rebuilds)
        node_type = Shape if isinstance(v, Shape) else type(v)
        entry = SUPPORTED_TYPE.get(node_type)
        if entry is None:
            if is_leaf is None:
                leaves.append(v)
                return LeafDef(_CONST_LEAF, None, v) if is_const_leaf(v) else \
                    LeafDef(_LEAF, leaf_type=type(v))
            return TreeDef(_CONST, None, v)
        children, aux = entry.flatten(v)
        return TreeDef("node", node_type, aux, [walk(c) for c in children])

    tree = walk(value)
    return leaves, tree


def _not_tensor_or_module(v):
    from ..module import Module
    from ..tensor import Tensor

    return not isinstance(v, (Tensor, Module))
