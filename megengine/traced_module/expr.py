"""Exprs: the steps of a traced graph, each reading input nodes and making output nodes.

``Input`` (a graph argument), ``GetAttr`` (a parameter, buffer or submodule of a module),
``Constant`` (a value captured while tracing), ``CallFunction`` (``F.relu(x)``, ``Tensor(x)``),
``CallMethod`` (a tensor method or operator, or a module call ``self.conv(x)``) and ``Apply``
(an engine op applied outside any of those, e.g. through a helper the tracer did not wrap).

An expr keeps its arguments as input nodes plus ``arg_def``, the `TreeDef` of
``(args, kwargs)`` whose leaves are the nodes (constants live in the TreeDef); ``interpret``
runs the step on values and returns the flat list of output values.
"""
import copy
import importlib
import inspect
import sys
from typing import List

import numpy as np

from ..core import dispatch
from ..core.tensor import Tensor
from ..module.module import Module, _access_structure
from .node import ModuleNode, Node, TensorNode
from .pytree import TreeDef, tree_flatten

__all__ = ["Expr", "Input", "GetAttr", "Constant", "CallFunction", "CallMethod", "Apply",
           "is_call_module", "is_call_function", "is_call_tensor_method", "is_getattr",
           "is_constant", "is_input", "is_apply_def", "ShapeOf"]

#: the version written into pickles of traced modules (upstream stores one too)
__version__ = "1.0"


def _is_node(x):
    return isinstance(x, Node)


def flat_outputs(result):
    """(tensor leaves, TreeDef) of a call's result: tensors are its outputs."""
    return tree_flatten(result, lambda x: isinstance(x, Tensor))


def _output_values(result):
    """The tensors of a call's result, in order (the common cases without a tree walk)."""
    if isinstance(result, Tensor):
        return [result]
    if type(result) is tuple and all(isinstance(r, Tensor) for r in result):
        return list(result)
    return flat_outputs(result)[0]


_EXTRA_KEYWORDS = ("older_names",)  # (F.prelu's: the names of its parameters in older versions)


def _at_default(value, param):
    """Whether ``value`` is ``param``'s default (a parameter upstream lacks is left out then)."""
    default = param.default
    return value is default or (type(value) is type(default) and value == default)


class Expr:
    """One step of a graph. ``inputs``/``outputs`` are lists of nodes."""

    _next_id = [0]

    def __init__(self):
        self._id = Expr._next_id[0]
        Expr._next_id[0] += 1
        self.inputs: List[Node] = []
        self.outputs: List[Node] = []
        self.arg_def = None
        self.out_def = None
        self._top_graph = None
        self._disable_remove = False

    @classmethod
    def _set_next_id(cls, i: int):
        Expr._next_id[0] = int(i)

    @classmethod
    def _get_next_id(cls) -> int:
        return Expr._next_id[0]

    @property
    def top_graph(self):
        return self._top_graph

    # ----- arguments -----
    def add_inputs(self, nodes):
        for n in nodes:
            self.inputs.append(n)
            n.users.append(self)

    def set_args_kwargs(self, *args, **kwargs):
        """Replace the arguments: node leaves become the inputs, the rest constants."""
        for n in self.inputs:
            if self in n.users:
                n.users.remove(self)
        self.inputs = []
        leaves, self.arg_def = tree_flatten((args, kwargs), _is_node)
        self.add_inputs(leaves)

    # ----- arguments by name (CallFunction and CallMethod: the function they call) -----
    def _get_func(self):
        raise TypeError(f"a {type(self).__name__} expr calls no function: named_args and "
                        f"set_arg are for CallFunction and CallMethod exprs")

    @property
    def named_args(self):
        """The arguments by parameter name, defaults filled in (a CallMethod's object is its
        ``self``), as upstream's ``Expr.named_args``."""
        func, args, kwargs = self._get_func(), self.args, self.kwargs
        try:
            bound = inspect.signature(func).bind(*args, **kwargs)
        except (TypeError, ValueError):
            return dict(kwargs)
        bound.apply_defaults()
        named = dict(bound.arguments)
        if (getattr(func, "__module__", None) or "").startswith("megengine.functional"):
            # a parameter upstream's function lacks (F.pad's ``pad_witdth`` of older
            # versions, ...) is left out where it has its default, as in the graph's print
            from ._upstream import _UPSTREAM_LACKS

            params = bound.signature.parameters
            for name in _UPSTREAM_LACKS.get(func.__name__, ()) + _EXTRA_KEYWORDS:
                if name in named and (_at_default(named[name], params[name]) or (
                        params[name].kind == params[name].VAR_KEYWORD and not named[name])):
                    del named[name]
        return named

    def set_arg(self, name, value):
        """Set the argument called ``name`` (by parameter name) to ``value``."""
        func = self._get_func()
        named = self.named_args
        if name not in named:
            raise KeyError(f"{getattr(func, '__qualname__', func)} has no argument {name!r}: "
                           f"its arguments are {sorted(named)}")
        named[name] = value
        params = inspect.signature(func).parameters
        args, kwargs = [], {}
        for pname, p in params.items():
            if pname not in named:
                continue
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                args.append(named[pname])
            elif p.kind == p.VAR_POSITIONAL:
                args.extend(named[pname])
            elif p.kind == p.VAR_KEYWORD:
                kwargs.update(named[pname])
            else:
                kwargs[pname] = named[pname]
        self.set_args_kwargs(*args, **kwargs)

    # ----- kept by compile -----
    def disable_remove(self):
        """Keep this expr when ``graph.compile()`` removes what no output depends on."""
        self._disable_remove = True

    def enable_remove(self):
        """Let ``graph.compile()`` remove this expr again where no output depends on it."""
        self._disable_remove = False

    def replace_inputs(self, repl_dict):
        """Read each value node of ``{old input: new node}`` where this expr read the key
        (upstream's ``Expr.replace_inputs``); a new node must be made earlier in the same
        graph."""
        for node, repl in list(repl_dict.items()):
            if type(node) is not type(repl):
                raise TypeError(f"replace_inputs: {node} is a {type(node).__name__}, {repl} a "
                                f"{type(repl).__name__}: replace a node by one of its kind")
            if not any(i is node for i in self.inputs):
                raise ValueError(f"replace_inputs: {node} is no input of {self!r}")
            graph = self.top_graph
            if repl.top_graph is not node.top_graph:
                raise ValueError(f"replace_inputs: {repl} and {node} are not in one graph")
            if graph is not None and repl.expr in graph._exprs and self in graph._exprs \
                    and graph._exprs.index(repl.expr) > graph._exprs.index(self):
                raise ValueError(f"replace_inputs: {repl} is made after {self!r}: insert its "
                                 "exprs before this one (graph.insert_exprs(expr))")
            count = sum(1 for i in self.inputs if i is node)  # x + x reads x twice
            self.inputs = [repl if i is node else i for i in self.inputs]
            for _ in range(count):
                node.users.remove(self)
                repl.users.append(self)

    @property
    def return_val(self):
        """The expr's result as its call returned it (a node, or a tuple/list/dict of them)."""
        return self.out_def.unflatten(self.outputs) if self.out_def is not None else \
            tuple(self.outputs)

    @return_val.setter
    def return_val(self, value):
        self.outputs, self.out_def = tree_flatten(value, _is_node)

    @property
    def args(self):
        return self.arg_def.unflatten(self.inputs)[0] if self.arg_def is not None else ()

    @property
    def kwargs(self):
        return self.arg_def.unflatten(self.inputs)[1] if self.arg_def is not None else {}

    def unflatten_args(self, values):
        """(args, kwargs) with ``values`` in place of the input nodes."""
        return self.arg_def.unflatten(values)

    def interpret(self, *values):
        raise NotImplementedError(f"{type(self).__name__} is not run by interpret")

    def _args_text(self, args=None, kwargs=None):
        if args is None:
            args, kwargs = self.arg_def.unflatten(self.inputs) if self.arg_def else ((), {})
        return _call_text(args, kwargs)

    def _outputs_text(self):
        # as upstream: the result as the call returned it (``(a, b)`` for a tuple, a dict as
        # a dict), printed by ``str``, whose nodes print by name ("{:i}" adds the ids)
        if not self.outputs:
            return ""
        if self.out_def is None:
            return ", ".join(str(o) for o in self.outputs) + " = "
        return str(self.return_val) + " = "

    def __repr__(self):
        return f"%{self._id}:\t{self._outputs_text()}{self._body_text()}"

    def _body_text(self):
        return type(self).__name__


# megengine.functional's functions whose module upstream 1.13 names otherwise, as a printed
# call names it (upstream 1.13 measured: the last part of each function's __module__)
_UPSTREAM_HOMES = {
    **{(home, name): "nn" for home, names in {
        "pooling": ("adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "max_pool2d"),
        "conv": ("conv1d", "conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d",
                 "deformable_conv2d", "local_conv2d", "region_restricted_conv",
                 "sliding_window", "sliding_window_transpose"),
        "normalization": ("batch_norm", "general_norm", "group_norm", "instance_norm",
                          "layer_norm", "local_response_norm", "sync_batch_norm"),
        "tensor": ("indexing_one_hot", "one_hot", "pad"),
        "math": ("logsumexp",), "attention": ("multi_head_attention",),
        "roi": ("deformable_psroi_pooling",)}.items() for name in names},
    ("roi", "roi_align"): "vision", ("roi", "roi_pooling"): "vision",
    ("ctc", "ctc_loss"): "loss",
    **{("elemwise", name): "tensor" for name in ("complex", "imag", "polar", "real")},
    # (megengine.distributed.functional upstream)
    **{("distributed", name): "functional" for name in (
        "all_gather", "all_reduce_max", "all_reduce_min", "all_reduce_sum", "all_to_all",
        "broadcast", "gather", "reduce_scatter_sum", "reduce_sum", "remote_recv",
        "remote_send", "scatter")},
}


# megengine.functional's functions whose dtype and device upstream 1.13 takes by keyword only
# (measured: its signatures against these), which a printed call names as upstream records them
_UPSTREAM_KEYWORD_ONLY = frozenset(["arange", "eye", "full", "linspace", "ones", "zeros"])


def _call_text(args, kwargs):
    """The arguments of a call as upstream prints them: ``str`` of each (a string unquoted,
    the items of a container by ``repr``), and the positional and the keyword part joined by
    ", " even where one is empty (``conv(x, )``, ``f(, k=1)``)."""
    positional = ", ".join(str(a) for a in args)
    named = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{positional}, {named}"


class Input(Expr):
    """A graph argument: ``self`` (a ModuleNode) or a tensor."""

    _is_input = True  # (its node keeps it when pickled: see Node.__getstate__)

    def __init__(self, name, node_type=TensorNode, qualname="", owner=None, **node_kwargs):
        super().__init__()
        self.name = name
        if node_type is ModuleNode:
            node = ModuleNode(self, name, qualname, owner=owner)
        else:
            node = TensorNode(self, name, qualname, **node_kwargs)
        self.outputs = [node]

    def _body_text(self):
        return "Input()"


def _value_node(expr, value):
    """The node ``expr`` gives for ``value``: a ModuleNode for a Module, else a TensorNode
    with the tensor's shape, dtype, quantization parameters and device."""
    if isinstance(value, Module):
        return ModuleNode(expr, owner=value)
    return TensorNode(expr, shape=value.shape, dtype=value.dtype,
                      qparams=getattr(value, "_qparams", None),
                      device=getattr(value, "_device", None))


class GetAttr(Expr):
    """``module.<name>``: a parameter, buffer or submodule (``name`` may be dotted:
    ``"block.conv"``, ``"layers.0"``)."""

    def __init__(self, module_node, name, value):
        super().__init__()
        self.name = name
        self.add_inputs([module_node])
        self.arg_def = tree_flatten(((module_node,), {}), _is_node)[1]
        self.outputs = [_value_node(self, value)]

    def interpret(self, module):
        name = self.name
        # a dotted name is a path, unless an attribute has that very name (upstream's guide
        # stores a fused layer under setattr(owner, "conv_bn.0", ...))
        if "." not in name or name in vars(module):
            return [getattr(module, name)]
        return [_access_structure(module, name)]

    def _body_text(self):
        return f'getattr({self.inputs[0]}, "{self.name}") -> ({_kind_text(self.outputs[0])})'


def _kind_text(node):
    """What upstream prints for the kind of a node: ``Tensor``, a layer's class, or
    ``Module`` for a module that is traced into (upstream's graphs record no class for
    those)."""
    if not isinstance(node, ModuleNode):
        return "Tensor"
    owner = node.owner
    if owner is not None:
        from .tracer import is_builtin

        if not is_builtin(owner):
            return "Module"
    mtype = node.module_type
    return mtype.__name__ if isinstance(mtype, type) else str(mtype)


def no_args_def():
    """The TreeDef of ``((), {})``: the arguments of an expr that takes none."""
    return TreeDef("node", tuple, None, [TreeDef("node", tuple, None, []),
                                         TreeDef("node", dict, [], [])])


class Constant(Expr):
    """A value captured while tracing (a tensor made inside forward from Python data, a
    global tensor, a module that is no attribute of the traced one)."""

    def __init__(self, value, name=None):
        super().__init__()
        self.value = value
        self.name = name
        self.arg_def = no_args_def()
        self.outputs = [_value_node(self, value)]

    def interpret(self):
        return [self.value]

    def _body_text(self):
        # as upstream: the constant's name (none for those tracing makes) and its kind
        kind = "Module" if isinstance(self.outputs[0], ModuleNode) else "Tensor"
        return f"Constant({self.name or ''}) -> ({kind})"


def _function_ref(func):
    """(module, qualified name) under which ``func`` can be found again, or None."""
    mod, name = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if mod and name and "<" not in name:
        target = sys.modules.get(mod)
        obj = target
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is func:
            return mod, name
    # functions made by a factory (F.neg) are found by their public name
    name = getattr(func, "__name__", None)
    if mod and name and getattr(sys.modules.get(mod), name, None) is func:
        return mod, name
    return None


def _resolve_ref(ref):
    obj = importlib.import_module(ref[0])
    for part in ref[1].split("."):
        obj = getattr(obj, part)
    return obj


class CallFunction(Expr):
    """``func(*args, **kwargs)``: a functional call, or a Tensor made from traced tensors."""

    def __init__(self, func):
        super().__init__()
        self.func = func

    def interpret(self, *values):
        args, kwargs = self.arg_def.unflatten(values)
        from . import tracer

        result = tracer.call_function(self.func, args, kwargs)
        if tracer._writes_argument(self.func):
            result = args[0]  # (shuffle: its step gives the tensor it shuffled in place)
        return _output_values(result)

    def _get_func(self):
        return self.func

    def _body_text(self):
        func = self.func
        name = getattr(func, "__name__", None) or type(func).__name__
        # as upstream: the last part of the function's module, where upstream's
        # megengine.functional has it (F.max_pool2d is nn.max_pool2d: pooling.py here)
        module = getattr(func, "__module__", None) or ""
        # (megengine.random's draws live in megengine/random/rng.py: ``random.uniform``)
        home = "random" if module.startswith("megengine.random") else module.rsplit(".", 1)[-1]
        home = _UPSTREAM_HOMES.get((home, name), home)
        text = self._args_text(*self._upstream_args())
        return f"{home}.{name}({text})" if home else f"{name}({text})"

    def _upstream_args(self):
        """(args, kwargs) as upstream prints the call: a parameter upstream's function lacks
        (F.matmul's ``format``, F.sort's ``axis``, F.batch_norm's ``param_dim``, ...) is left
        out where it has its default, as `mge.save` leaves it out for upstream, and the
        ``dtype`` and ``device`` that upstream's F.zeros & co. take by keyword only are
        keywords (upstream sorts them: ``device=None, dtype=float32``)."""
        args, kwargs = self.args, self.kwargs
        func = self.func
        from ._upstream import _UPSTREAM_LACKS

        name = getattr(func, "__name__", None)
        lacks = _UPSTREAM_LACKS.get(name, ())
        keyword_only = name in _UPSTREAM_KEYWORD_ONLY
        if not (lacks or keyword_only) or not (getattr(func, "__module__", None) or ""
                                               ).startswith("megengine.functional"):
            return args, kwargs
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            return args, kwargs
        names = list(params)
        args, kwargs = list(args), dict(kwargs)
        for name in sorted((n for n in lacks if n in params), key=names.index, reverse=True):
            if name in kwargs:
                if _at_default(kwargs[name], params[name]):
                    del kwargs[name]
            elif names.index(name) == len(args) - 1 and _at_default(args[-1], params[name]):
                args.pop()  # (a trailing positional argument only: the others keep places)
        if keyword_only and "dtype" in names and len(args) > names.index("dtype"):
            first = names.index("dtype")  # (dtype and device are the last parameters)
            kwargs.update(zip(names[first:], args[first:]))
            args, kwargs = args[:first], dict(sorted(kwargs.items()))
        return tuple(args), kwargs

    def __getstate__(self):
        state = dict(self.__dict__)
        ref = _function_ref(self.func)
        if ref is not None:
            state["func"] = ref
            state["_func_is_ref"] = True
        return state

    def __setstate__(self, state):
        if state.pop("_func_is_ref", False):
            state["func"] = _resolve_ref(state["func"])
        self.__dict__.update(state)


class CallMethod(Expr):
    """``obj.method(*args, **kwargs)``: ``inputs[0]`` is the object's node (a TensorNode for
    a tensor method or operator, a ModuleNode with method ``"__call__"`` for a module call)."""

    def __init__(self, node, method="__call__"):
        super().__init__()
        self.method = method
        if node is not None:
            self.add_inputs([node])
            self.arg_def = tree_flatten(((node,), {}), _is_node)[1]

    def interpret(self, *values):
        args, kwargs = self.arg_def.unflatten(values)
        obj = args[0]
        if self.method == "shape":  # (a pickle of an older graph: the dims as 0-d int32 tensors)
            shape = obj.shape
            if isinstance(shape, tuple) and shape and isinstance(shape[0], Tensor):
                return list(shape)  # being traced again: already recorded tensors
            return [Tensor(np.int32(d), device=obj._device) for d in shape]
        if self.method == "__call__":
            result = obj(*args[1:], **kwargs)
        else:
            result = getattr(obj, self.method)(*args[1:], **kwargs)
        if self.method == "__setitem__":
            result = obj  # the tensor, written in place, is the output
        return _output_values(result)

    def _get_func(self):
        """The function called: a module call's ``forward`` (of the module's class), else the
        tensor method (its object is the first argument, ``self``)."""
        node = self.inputs[0] if self.inputs else None
        if isinstance(node, ModuleNode):
            cls = node.module_type or type(node.owner)
            return getattr(cls, "forward" if self.method == "__call__" else self.method)
        return getattr(Tensor, self.method)

    @property
    def graph(self):
        """The graph this call runs: the callee's graph for a traced module, else None."""
        node = self.inputs[0] if self.inputs else None
        if not isinstance(node, ModuleNode) or self.method != "__call__":
            return None
        owner = node.owner
        graph_for = getattr(owner, "_graph_for", None)
        if graph_for is None:
            return None
        args, kwargs = self.args, self.kwargs
        return graph_for(args[1:], kwargs)

    def _body_text(self):
        obj = self.inputs[0] if self.inputs else "?"
        args, kwargs = self.arg_def.unflatten(self.inputs) if self.arg_def else ((None,), {})
        if self.method == "shape":
            return f"{obj}.shape"
        method = "" if self.method == "__call__" else f".{self.method}"
        return f"{obj}{method}({self._args_text(args[1:], kwargs)})"


class Apply(Expr):
    """An op applied to traced tensors outside any wrapped call: an engine op, or one of
    upstream's op descriptors given to ``core2.apply`` (``opdef``, as upstream records them).
    ``op`` is a copy taken before it ran (an op keeps what its backward needs on itself), and
    each interpretation applies a fresh copy of it."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    @property
    def opdef(self):
        return self.op

    def interpret(self, *values):
        op = copy.copy(self.op)
        if isinstance(op, dispatch.Op):
            out = dispatch.apply(op, *values)
            return list(out) if isinstance(out, tuple) else [out]
        from ..core._imperative_rt.core2 import apply  # an upstream op descriptor

        return list(apply(op, *values))

    def _outputs_text(self):
        return ", ".join(str(o) for o in self.outputs) + " = " if self.outputs else ""

    def _body_text(self):
        return f"{op_name(self.op)}({', '.join(str(i) for i in self.inputs)})"


def op_name(op):
    """An op's name as upstream prints and names its Apply steps: its class, an Elemwise its
    mode (``ADD(x, y)``, whose output is ``add_out``; upstream 1.13 measured)."""
    name = type(op).__name__
    if name in ("Elemwise", "ElemwiseMultiType") and hasattr(op, "mode"):
        name = getattr(op.mode, "name", op.mode)
    return str(name)


class ShapeOf(Apply):
    """``x.shape`` of a traced tensor: upstream's GetVarShape applied to it (one int32 shape
    tensor, which the forward indexes). It follows inputs of other shapes and numbers of dims,
    except where the forward's code (or a module it gave the shape to) counted the traced dims
    (``fixed_ndim``: it unpacked, sliced, compared or concatenated the shape, or took its
    ``len``) or reads a size that the input lacks: a call then raises ValueError naming the
    traced shape."""

    fixed_ndim = False
    read_in_call = None  # the size index a module given the shape reads that needs most dims

    def interpret(self, x):
        traced = self.inputs[0].shape
        if traced is not None and x.ndim != len(traced):
            self._check_ndim(x, traced)
        shape = x.shape
        if hasattr(shape, "_tensor"):  # traced again (trace_module): a recorded shape tensor
            if self.fixed_ndim:
                shape._whole()
            if self.read_in_call is not None:
                shape._expr.read_by_call(self.read_in_call)
            return [shape._tensor]
        # (a Tensor of the sizes: what a dumpable jit.trace computes again at other shapes)
        return [Tensor(shape, dtype=np.int32, device=x._device)]

    def read_by_call(self, index):
        """A module given this shape read its size ``index`` (kept while tracing)."""
        if self.read_in_call is None or _dims_needed(index) > _dims_needed(self.read_in_call):
            self.read_in_call = index

    def _check_ndim(self, x, traced):
        name = self.inputs[0].name
        why = "its forward counted the dims (unpacked, sliced, compared, concatenated or " \
              f"took len of {name}.shape, there or in a module given it)" \
            if self.fixed_ndim else None
        missing = lambda index: isinstance(index, int) and not -x.ndim <= index < x.ndim
        for user in self.outputs[0].users:
            if why is None and is_call_tensor_method(user) and user.method == "__getitem__" \
                    and missing(user.args[1]):
                why = f"its forward reads {name}.shape[{user.args[1]}]"
        if why is None and missing(self.read_in_call):
            why = f"a module its forward gave {name}.shape reads its size [{self.read_in_call}]"
        if why is not None:
            graph = self.top_graph.name if self.top_graph is not None else "?"
            raise ValueError(
                f"graph {graph}: {name} was traced with shape {tuple(traced)} and {why}, so "
                f"it cannot take an input of shape {tuple(x.shape)} ({x.ndim} dims): trace "
                f"the module again with a {x.ndim}-dim input")


def _dims_needed(index):
    return index + 1 if index >= 0 else -index


def is_call_module(expr) -> bool:
    return (isinstance(expr, CallMethod) and expr.method == "__call__"
            and bool(expr.inputs) and isinstance(expr.inputs[0], ModuleNode))


def is_call_tensor_method(expr) -> bool:
    return isinstance(expr, CallMethod) and not is_call_module(expr)


def is_call_function(expr) -> bool:
    return isinstance(expr, CallFunction)


def is_getattr(expr) -> bool:
    return isinstance(expr, GetAttr)


def is_constant(expr) -> bool:
    return isinstance(expr, Constant)


def is_input(expr) -> bool:
    return isinstance(expr, Input)


def is_apply_def(expr) -> bool:
    return isinstance(expr, Apply)
