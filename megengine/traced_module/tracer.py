"""The tracer: records a module's forward into graphs while `trace_module` or
``graph.insert_exprs()`` runs.

How calls are seen. While a `Tracer` is active (and only then) it patches:

- the public functions of ``megengine.functional`` and its submodules, and
  ``megengine.random``'s draws (``uniform``, ``normal``, ``permutation``, ``shuffle``, ...), in
  those modules' namespaces and in the globals of each traced ``forward`` (so ``from
  megengine.functional import relu`` is seen too);
- the operators and tensor-returning methods of `Tensor`, and ``Tensor.__init__`` (a tensor
  made from traced tensors, ``Tensor([1, x, 1])``);
- ``Module.__call__``;
- the dispatcher's hook (``dispatch._trace_hook``): an op applied to traced tensors outside
  any of the above is recorded as an `Apply`, so nothing computed from an input is silently
  frozen into a constant.

Each wrapper reads the module global ``_active`` and the tracer's ``depth`` once: only calls at
depth 0 are recorded, and the original runs at depth 1, so the functions and ops *inside* a
recorded call are not recorded again. When no tracer is active nothing is patched: untraced
code pays nothing.

Scopes. Each user module's forward is traced into a graph of its own (a `_Scope`): its inputs
are ``self`` and the tensors it was given; a tensor the scope has not seen is a parameter or
buffer of the module (a `GetAttr`, found by identity among the module's tensors) or else a
`Constant`. A builtin module (the layers of ``megengine.module``, QAT layers, observers,
`PyTorchModule`, classes given to `register_as_builtin`) is one ``CallMethod`` and is not
looked into.
"""
import inspect
import sys
import types

import numpy as np

from ..core import _rng as _core_rng
from ..core import _trace_option, dispatch
from ..core.tensor import Tensor
from ..functional.creation import copy as _copy
from ..module.module import Module
from .expr import (Apply, CallFunction, CallMethod, Constant, Expr, GetAttr, Input, ShapeOf,
                   flat_outputs)
from .node import ModuleNode, Node, TensorNode
from .pytree import tree_flatten

_active = None  # the Tracer that records right now, or None
_RESET = vars(Tensor)["_reset"]  # (the write `set_value` makes; see `_ApplyHook.event`)

# Tensor methods recorded as CallMethod: operators and the methods that return tensors.
_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
           "xor", "lshift", "rshift")
TENSOR_METHODS = tuple(
    [f"__{p}{n}__" for n in _BINARY for p in ("", "r", "i")]
    + [f"__{n}__" for n in ("eq", "ne", "lt", "le", "gt", "ge", "neg", "pos", "abs", "invert")]
    + ["__getitem__", "__setitem__", "astype", "reshape", "transpose", "flatten", "sum",
       "mean", "prod", "max", "min", "to", "detach", "_broadcast"]
)

_builtin_types = set()  # registered by register_as_builtin
_check_exprs = [False]  # enable_expr_checker
_check_module = [True]  # the whole module too, under enable_expr_checker (disable_default_checker)
_wrapper_of = {}  # original functional function -> its recording wrapper (made once)
_wrappers = set()  # those wrappers, so a patched namespace is never wrapped twice


def register_as_builtin(mod_cls):
    """Trace calls of ``mod_cls`` modules as one step, without looking into their forward."""
    if not (isinstance(mod_cls, type) and issubclass(mod_cls, Module)):
        raise TypeError(f"register_as_builtin expects a Module subclass, got {mod_cls!r}")
    _builtin_types.add(mod_cls)


def is_builtin(module) -> bool:
    """Whether calls of ``module`` are recorded as one step (not traced into)."""
    cls = type(module)
    if cls in _builtin_types:
        return True
    from ..module.sequential import Sequential

    if cls is Sequential:  # a container: traced into, as upstream
        return False
    from ..quantization.fake_quant import _FakeQuantize
    from ..quantization.observer import Observer

    if isinstance(module, (Observer, _FakeQuantize)):  # user subclasses too, as upstream
        return True
    # megengine's own layers (and quantization observers, PyTorchModule) are not user code;
    # a TracedModule (megengine.traced_module) is traced into
    return cls.__module__.startswith("megengine.") and not cls.__module__.startswith(
        "megengine.traced_module")


_RECORDED_HOMES = ("megengine.functional", "megengine.random")


def _in_recorded_home(module_name):
    """Whether ``module_name`` is megengine.functional or megengine.random, or inside them."""
    return any(module_name == h or module_name.startswith(h + ".") for h in _RECORDED_HOMES)


def _functional_modules():
    """The modules whose public functions a trace records as one step each: megengine.functional
    and megengine.random (a draw recorded as a step draws anew on every call of the traced
    module, from the generator ``megengine.random.seed`` sets)."""
    return [m for name, m in list(sys.modules.items())
            if m is not None and _in_recorded_home(name)]


def _recorded_home(func):
    """Whether ``func`` belongs to megengine.functional or megengine.random."""
    return _in_recorded_home(getattr(func, "__module__", None) or "")


def _is_recordable(name, value):
    if name.startswith("_") or not _recorded_home(value):
        return False
    if isinstance(value, types.FunctionType):
        return True
    # megengine.random's module-level draws (uniform, normal, ...) are methods of its default
    # RNG, as upstream's; an RNG object of the program's own is not recorded (see _ApplyHook)
    from ..random import rng

    return isinstance(value, types.MethodType) and value.__self__ is rng._default_rng


def _writes_argument(func):
    """Whether ``func`` works in place on its first argument and returns None
    (``megengine.random.shuffle``): its step gives that argument, updated, as its output."""
    from ..random import rng

    return getattr(func, "__func__", None) is rng.RNG.shuffle


def _make_wrapper(func):
    def wrapper(*args, **kwargs):
        tracer = _active
        if tracer is None or tracer.depth:
            return func(*args, **kwargs)
        return tracer.record_function(func, args, kwargs)

    wrapper.__wrapped__ = func
    for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
        setattr(wrapper, attr, getattr(func, attr, None))
    return wrapper


def _functional_wrappers():
    """original -> wrapper for every public function of megengine.functional and
    megengine.random (cached)."""
    for mod in _functional_modules():
        for name, value in list(vars(mod).items()):
            if (isinstance(value, (types.FunctionType, types.MethodType))
                    and value not in _wrappers and value not in _wrapper_of
                    and _is_recordable(name, value)):
                _wrapper_of[value] = w = _make_wrapper(value)
                _wrappers.add(w)
    return _wrapper_of


def wrap(func):
    """``@wrap`` on a function of your own: calls of it inside a traced forward are recorded
    as one CallFunction (its body is not looked into), as upstream's ``wrap``. Use the
    returned function (a module-level ``@wrap`` does that)."""
    if not callable(func):
        raise TypeError(f"wrap expects a function, got {type(func).__name__}")

    def recorded(*args, **kwargs):
        tracer = _active
        if tracer is None or tracer.depth:
            return func(*args, **kwargs)
        # the step calls this function (found again by name when a graph is unpickled)
        return tracer.record_function(recorded, args, kwargs, run=func)

    for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
        setattr(recorded, attr, getattr(func, attr, None))
    recorded.__wrapped__ = func
    recorded._bind_when_traced = True  # recorded as upstream: ``f(y, 2.0, 1.0, )``
    return recorded


def enable_expr_checker(enable: bool = True):
    """Check every step while tracing (upstream's ``enable_expr_checker``): each recorded
    expr is run again on copies of its recorded inputs and must give the values the traced
    forward got, and the TracedModule must return what the traced forward returned; a step
    that does not reproduce (it reads Python state the graph cannot see) raises ValueError
    naming it. Costs a second run of every step, so it is off by default."""
    _check_exprs[0] = bool(enable)


def disable_default_checker():
    """Upstream's switch off for its check after tracing: the TracedModule run once more on the
    traced arguments, which must return what ``forward`` returned. Here that check runs only
    under `enable_expr_checker` (upstream runs it on every trace: a training-mode BatchNorm's
    statistics then move twice); after this call it does not run there either, and the
    per-expr checks stay."""
    _check_module[0] = False


def _copy_value(v):
    if isinstance(v, Tensor) and type(v) is Tensor:
        with dispatch.on_device(v._device):  # CuPy copies onto the current GPU
            return Tensor._wrap(v._data.copy(), v._device)
    return v


def _assert_same(expr, got, expected):
    for g, e in zip(got, expected):
        if isinstance(e, Tensor):
            g_np = np.asarray(g.numpy() if isinstance(g, Tensor) else g)
            e_np = e.numpy()
            if g_np.shape != e_np.shape or not np.allclose(g_np, e_np, rtol=1e-5, atol=1e-6,
                                                            equal_nan=True):
                raise ValueError(
                    f"expr checker: {expr!r} gives other values when run again from its "
                    "recorded inputs: the step depends on something the graph does not "
                    "record (Python state, randomness); make it a module or function "
                    "input, or keep it out of forward"
                )


def rng_state():
    """megengine.random's generator and its state (a recorded draw changes the state)."""
    generator = _core_rng.generator
    return generator, generator.bit_generator.state


def set_rng_state(state):
    """Make ``state`` (from `rng_state`) megengine.random's generator and state again."""
    generator, bit_state = state
    generator.bit_generator.state = bit_state
    _core_rng.generator = generator


def call_function(func, args, kwargs):
    """Run ``func`` for `CallFunction.interpret`: recorded when a tracer is active."""
    tracer = _active
    if tracer is None or tracer.depth:
        return func(*args, **kwargs)
    return tracer.record_function(func, args, kwargs)


def in_surgery():
    return _active is not None and _active.surgery and _active.depth == 0


class _Scope:
    """One graph being built: the module it belongs to and the nodes of the tensors seen."""

    def __init__(self, graph, module, self_node, pending=None):
        self.graph = graph
        self.module = module
        self.self_node = self_node
        self.values = {id(module): (module, self_node)}  # id -> (object, node)
        self._attr_keys = None
        self.pending = pending  # insert_exprs: new exprs go here, not into graph._exprs
        # id(submodule) or the node of a submodule's getattr -> the name of its latest read
        self.call_names = {}
        self.defer_names = False  # while on, exprs wait for a name until first used
        self.unnamed = set()  # those exprs (`_TracedShape.reading`)
        self.attr_nodes = {}  # attribute name of a submodule read -> the node of its getattr
        self.reads = {}  # id(submodule) -> the nodes of its reads not yet called

    def _attrs(self):
        if self._attr_keys is None:
            keys = {}
            for key, leaf in self.module._flatten(with_key=True, recursive=True):
                keys.setdefault(id(leaf), (key, leaf))
            self._attr_keys = keys
        return self._attr_keys

    def attr_key(self, obj):
        entry = self._attrs().get(id(obj))
        return entry[0] if entry is not None and entry[1] is obj else None

    def tensor_of_dict(self, attributes):
        """The tensor of this graph (one seen, or an attribute of the module) whose instance
        dict is ``attributes``, or None."""
        seen = [obj for obj, _ in self.values.values()]
        attrs = [leaf for _, leaf in self._attrs().values()]
        return next((t for t in seen + attrs
                     if isinstance(t, Tensor) and vars(t) is attributes), None)

    def emit(self, expr):
        expr._top_graph = self.graph
        for n in expr.outputs:
            n._top_graph = self.graph
        if self.pending is not None:
            self.pending.append(expr)
        else:
            self.graph._exprs.append(expr)
        if self.defer_names:
            self.unnamed.add(expr)
        else:
            self.graph._namespace.auto_name(expr)

    def name_on_use(self, node):
        """Name ``node`` now if its expr waits for a name (a size of a shape read ahead)."""
        if node.expr in self.unnamed:
            self.unnamed.discard(node.expr)
            self.graph._namespace.auto_name(node.expr)


class _ModuleRecord:
    """What tracing learned about one user module: its graphs per argument structure."""

    def __init__(self, module):
        self.module = module
        self.graphs = {}
        self.outdefs = {}


def _with_defaults(func, args, kwargs, method=False):
    """As upstream records a functional call: every parameter before ``*`` positional, every
    one after it by keyword, defaults filled in (its guide: ``F.batch_norm(x, weight=w,
    bias=b, training=True)`` has ``expr.args == (x, None, None, weight, bias)`` and ``eps``
    in ``expr.kwargs``). Only for megengine.functional, megengine.random, `wrap`ped functions
    and (``method``, ``args`` starting with the tensor) Tensor's methods: ``x.sum(axis=1)`` is
    recorded as ``x.sum(1, False)``; other callables stay as called."""
    if not method and not getattr(func, "_bind_when_traced", False) and not _recorded_home(
            func):
        return args, kwargs
    try:
        sig = inspect.signature(func)
        bound = sig.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args, kwargs  # let the call itself report a bad argument
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        return args, kwargs
    bound.apply_defaults()
    pos, kw = [], {}
    for name, p in sig.parameters.items():
        if p.kind == p.KEYWORD_ONLY:
            kw[name] = bound.arguments[name]
        else:
            pos.append(bound.arguments[name])
    return tuple(pos), dict(sorted(kw.items()))  # upstream lists them by name


class Tracer:
    """Records calls into graphs; activate with ``with tracer:``."""

    def __init__(self, surgery=False):
        self.depth = 0
        self.scopes = []
        self.records = {}  # id(module) -> _ModuleRecord
        self.read_attrs = set()  # ids of the tensors some GetAttr reads
        # id(module) -> {attribute name: None}: the attributes its forward read, in the order
        # it first read them (upstream's TracedModule holds its submodules in that order)
        self.read_order = {}
        self.shared = set()  # nodes two tensors stand for (one adopted the other's attributes)
        self.surgery = surgery
        self._patched = []  # (namespace dict, name, original)
        self._patched_globals = set()
        self.values = {} if _check_exprs[0] else None  # node -> value copy, for the checker

    # ----- activation -----
    def __enter__(self):
        global _active
        if _active is not None:
            raise RuntimeError("trace_module / insert_exprs cannot run inside another one")
        if dispatch._trace_hook is not None:
            raise RuntimeError(
                "trace_module cannot run while megengine.jit.trace records: call trace_module "
                "outside the traced function"
            )
        wrappers = _functional_wrappers()
        for mod in _functional_modules():
            self._patch_namespace(vars(mod), wrappers)
        tensor_dict = vars(Tensor)
        for name in TENSOR_METHODS:
            orig = tensor_dict.get(name)
            if orig is not None:
                self._set(Tensor, name, orig, _tensor_method_wrapper(name, orig))
        name = tensor_dict["name"]
        self._set(Tensor, "name", name, property(name.fget, _name_setter_wrapper(name.fset)))
        self._patched.append((vars(dispatch), "_adopt_hook", dispatch._adopt_hook))
        dispatch._adopt_hook = self.adopt
        self._set(Tensor, "__init__", tensor_dict["__init__"],
                  _tensor_init_wrapper(tensor_dict["__init__"]))
        self._set(Module, "__call__", vars(Module)["__call__"],
                  _module_call_wrapper(vars(Module)["__call__"]))
        # (in insert_exprs too: the forward of a module called there reads its attributes as
        # traced code does; the edit's own reads go through nodes, `_surgery_getattr`)
        self._set(Module, "__getattribute__", vars(Module).get("__getattribute__"),
                  _module_getattribute_wrapper(Module.__getattribute__))
        if not self.surgery:
            shape = tensor_dict["shape"]
            self._set(Tensor, "shape", shape, property(_shape_wrapper(shape.fget)))
            self._set(Tensor, "__len__", tensor_dict["__len__"],
                      _untraced_wrapper(tensor_dict["__len__"]))
        dispatch._trace_hook = self.apply_hook = _ApplyHook(self)
        # shapes are symbolic while tracing, as upstream's trace_module / insert_exprs set them:
        # ``x.shape`` answers a shape Tensor's reads (``x.shape.numpy()``)
        self._symbolic_shape = _trace_option.set_symbolic_shape(True)
        _active = self
        return self

    def __exit__(self, *exc):
        global _active
        _active = None
        dispatch._trace_hook = None
        _trace_option.set_symbolic_shape(self._symbolic_shape)
        while self._patched:
            target, name, orig = self._patched.pop()
            if isinstance(target, dict):
                target[name] = orig
            elif orig is None:  # the class had none of its own
                delattr(target, name)
            else:
                setattr(target, name, orig)
        return False

    def _set(self, cls, name, orig, new):
        self._patched.append((cls, name, orig))
        setattr(cls, name, new)

    def _patch_namespace(self, namespace, wrappers):
        for name, value in list(namespace.items()):
            if isinstance(value, (types.FunctionType, types.MethodType)):
                w = wrappers.get(value)
                if w is not None:
                    self._patched.append((namespace, name, value))
                    namespace[name] = w

    def patch_globals_of(self, fn):
        g = getattr(getattr(fn, "__func__", fn), "__globals__", None)
        if g is not None and id(g) not in self._patched_globals:
            self._patched_globals.add(id(g))
            self._patch_namespace(g, _wrapper_of)

    # ----- nodes of values -----
    @property
    def scope(self):
        return self.scopes[-1]

    def known(self, obj):
        entry = self.scope.values.get(id(obj))
        return entry is not None and entry[0] is obj

    def is_traced(self, obj):
        return self.known(obj) or self.scope.attr_key(obj) is not None

    def node_of(self, obj):
        """The node of a tensor or module in the current scope, made on first use."""
        scope = self.scope
        entry = scope.values.get(id(obj))
        if entry is not None and entry[0] is obj:
            scope.name_on_use(entry[1])
            return entry[1]
        key = scope.attr_key(obj)
        self.depth += 1
        try:
            if key is not None:
                expr = GetAttr(scope.self_node, key, obj)
                self.read_attrs.add(id(obj))
                self.read_order.setdefault(id(scope.module), {})[key.split(".")[0]] = None
            else:
                expr = Constant(obj)
        finally:
            self.depth -= 1
        node = expr.outputs[0]
        scope.emit(expr)
        self.bind(obj, node)
        return node

    def read_attribute(self, value, owner=None, name=None):
        """Traced code read ``value``, a submodule or tensor, as an attribute: as upstream, its
        getattr is recorded here, where it is read (``self.relu(self.bn(self.conv(x)))``
        reads relu, bn, conv in that order, which ids and names follow), and each further
        read of a submodule takes a name of its own, which its call's outputs are named
        after (the second ``self.a(x)`` gives ``a_1_out``)."""
        scope = self.scope
        self.depth += 1
        try:
            key = scope.attr_key(value)
        finally:
            self.depth -= 1
        if key is None:
            return
        if owner is scope.module:  # (by the name read: ``self.b = self.a`` keeps b when read)
            self.read_order.setdefault(id(owner), {})[name] = None
        if isinstance(value, Module) and owner is scope.module:
            self._read_submodule(value, name)
            return
        first = not self.known(value)
        node = self.node_of(value)
        if isinstance(value, Module):
            name = node._name
            if not first:
                namespace = scope.graph._namespace
                name = namespace.create_unique_name(key.replace(".", "_"))
                namespace.used_names[name] = node
            scope.call_names[id(value)] = name

    def read_container(self, name):
        """``self.<name>``, a list or dict holding modules: as upstream, each read takes a name
        (upstream makes a node of the container, merged away later), so that its items'
        getattrs are named as upstream names them (the second read's ``self.bs[1]`` is
        ``bs_2``)."""
        self.scope.graph._namespace.reserve(name)

    def _read_submodule(self, module, name):
        """``self.<name>``, a submodule: a getattr of ``name`` the first time, which the call
        after it uses. A submodule under two names (``self.b = self.a``) has a getattr per name
        read, as upstream."""
        scope = self.scope
        node = scope.attr_nodes.get(name)
        if node is None:
            self.depth += 1
            try:
                expr = GetAttr(scope.self_node, name, module)
            finally:
                self.depth -= 1
            node = scope.attr_nodes[name] = expr.outputs[0]
            scope.emit(expr)
            call_name = node._name
        else:
            namespace = scope.graph._namespace
            call_name = namespace.create_unique_name(name)
            namespace.used_names[call_name] = node
        self.bind(module, node)
        # a call is named after the latest read of its name (upstream's ``self.fc(self.fc(x))``
        # gives fc_1_out, fc_1_out_1)
        scope.call_names[id(module)] = scope.call_names[node] = call_name
        # the next call of the module is of this read, unless another read comes first:
        # ``self.b(self.a(x))`` reads b, a, calls a, then b
        scope.reads.setdefault(id(module), []).append(node)

    def adopt(self, tensor, attributes):
        """``tensor.__dict__ = other.__dict__`` in traced code (basedet's ``Boxes.__init__``
        adopting a tensor's attributes): ``tensor`` stands for ``other``'s node from then on,
        as upstream's tracer keeps a tensor's node among its attributes (its ``NodeMixin``).
        An in-place update of either gives that one a node of its own (`record_method`), as
        it gives it a value of its own."""
        if self.depth or not self.scopes:
            return
        source = self.scope.tensor_of_dict(attributes)
        if source is not None and source is not tensor:
            node = self.node_of(source)
            self.alias(tensor, node)
            self.shared.add(node)

    def alias(self, tensor, node):
        """``tensor`` stands for ``node``, whose value (for the checker) another tensor is."""
        self.scope.values[id(tensor)] = (tensor, node)

    def bind(self, obj, node):
        self.scope.values[id(obj)] = (obj, node)
        if self.values is not None:
            self.values[node] = _copy_value(obj)

    def check(self, expr, outputs, rng_start=None):
        """The checker: run ``expr`` again on copies of its inputs' recorded values (and, given
        ``rng_start``, from the state megengine.random's generator had when the step ran, so a
        draw is checked to give the same draw again)."""
        if self.values is None:
            return
        try:
            inputs = [_copy_value(self.values[n]) for n in expr.inputs]
        except KeyError:
            return  # an input made outside this trace (insert_exprs): nothing to compare
        rng_end = rng_state()
        if rng_start is not None:
            set_rng_state(rng_start)
        self.depth += 1
        try:
            got = expr.interpret(*inputs)
        finally:
            self.depth -= 1
            set_rng_state(rng_end)
        _assert_same(expr, got, outputs)

    def placeholder(self, node):
        """A tensor standing for ``node`` inside insert_exprs (its value, the attribute a
        getattr node reads, or zeros)."""
        if node.value is not None:
            value = node.value
        elif isinstance(node.expr, GetAttr) and node.expr.inputs[0].owner is not None:
            value = node.expr.interpret(node.expr.inputs[0].owner)[0]
        else:
            self.depth += 1
            try:
                if node.shape is None:
                    raise ValueError(f"node {node} has no known shape: set node.shape first")
                value = Tensor(np.zeros(node.shape, dtype=node.dtype or np.float32),
                               device=node.device)  # the node's device, not the default
            finally:
                self.depth -= 1
        self.bind(value, node)
        return value

    # ----- recording -----
    def _to_values(self, args, kwargs):
        """Inside insert_exprs: nodes in the arguments become tensors / modules."""
        leaves, tree = tree_flatten((args, kwargs), lambda x: isinstance(x, Node))
        if not leaves:
            return args, kwargs
        values = []
        for n in leaves:
            if isinstance(n, TensorNode):
                values.append(self.placeholder(n))
            else:
                self.bind(n.owner, n)
                values.append(n.owner)
        return tree.unflatten(values)

    def _to_nodes(self, result):
        """Inside insert_exprs: the tensors of a result become their nodes, which hold them
        until insert_exprs ends (a later call in it computes with them, not with zeros)."""
        leaves, tree = flat_outputs(result)
        if not leaves:
            return result
        nodes = [self.node_of(t) for t in leaves]
        for node, value in zip(nodes, leaves):
            node.value = value
        return tree.unflatten(nodes)

    def _record(self, expr, args, kwargs, run, self_obj=None, shape_inputs=False):
        """Record ``expr`` for ``run(*args, **kwargs)``: its inputs are the tensors and
        modules among ``((self_obj,) + args, kwargs)`` (with ``shape_inputs``, also the shape
        tensor of each traced shape of this graph there), its outputs the tensors returned."""
        surgery = self.surgery and len(self.scopes) == 1
        if surgery:
            args, kwargs = self._to_values(args, kwargs)
            if isinstance(self_obj, Node):
                self_obj = self._to_values((self_obj,), {})[0][0]
        full = ((self_obj,) + tuple(args) if self_obj is not None else tuple(args), kwargs)
        leaves, arg_def = tree_flatten(full, lambda x: isinstance(x, (Tensor, Module)) or (
            shape_inputs and self._own_shape(x)))
        inputs = [self.node_of(x._tensor if type(x) is _TracedShape else x) for x in leaves]
        rng_start = rng_state() if self.values is not None else None  # (for the checker)
        self.depth += 1
        try:
            result = run(*args, **kwargs)
            outs = self_obj if getattr(expr, "method", None) == "__setitem__" else result
            if isinstance(expr, CallFunction) and _writes_argument(expr.func):
                outs = args[0]  # (shuffle: the tensor it shuffled in place)
            out_leaves, out_def = flat_outputs(outs)
            # (at depth 1: the shape of an output written in place is read, not recorded)
            out_nodes = [TensorNode(expr, shape=t.shape, dtype=t.dtype,
                                    qparams=getattr(t, "_qparams", None), device=t._device)
                         for t in out_leaves]
        finally:
            self.depth -= 1
        if not out_leaves:
            return result  # nothing tensor-valued came out: a Python value, not a step
        expr.add_inputs(inputs)
        expr.arg_def = arg_def
        expr.out_def = out_def
        expr.outputs = out_nodes
        self.scope.emit(expr)
        for t, n in zip(out_leaves, expr.outputs):
            self.bind(t, n)
        self.check(expr, out_leaves, rng_start)
        return self._to_nodes(result) if surgery else result

    def _own_shape(self, value):
        """Whether ``value`` is ``x.shape`` of a tensor of this graph (a `_TracedShape`)."""
        return type(value) is _TracedShape and self.known(value._tensor)

    def _shape_tensors(self, args, kwargs):
        """A traced ``x.shape`` given whole to a call, alone or inside the tuples, lists and
        dicts of its arguments (``F.zeros(x.shape)``, ``F.concat([x.shape, y.shape])``), as its
        shape tensor, as upstream's ``x.shape`` is there: the call then follows inputs of
        other sizes and numbers of dims. (A shape read in an outer graph stays its sizes: they
        are this graph's inputs.)"""
        shapes, tree = tree_flatten((args, kwargs), self._own_shape)
        if not shapes:
            return args, kwargs
        return tree.unflatten([s._tensor for s in shapes])

    def record_function(self, func, args, kwargs, run=None):
        if _recorded_home(func) and getattr(func, "__name__", None) in ("seed", "manual_seed"):
            raise TypeError(
                f"trace_module: forward calls megengine.random.{func.__name__}, which a traced "
                "module cannot record (it would not reseed on its calls, and draw otherwise "
                "than the module); seed before calling the module instead")
        func = self._permutation_func(func, args, kwargs)
        args, kwargs = self._shape_tensors(*_with_defaults(func, args, kwargs))
        return self._record(CallFunction(func), args, kwargs, run or func)

    def _permutation_func(self, func, args, kwargs):
        """``megengine.random.permutation(x.shape[0])``: the size is a 0-d Tensor while
        tracing, which permutation would shuffle as a one-element Tensor, where the module,
        given an int, permutes ``range(n)``; such a call is recorded as a permutation of a size
        (``random._permutation_of_size``)."""
        from ..random import rng

        if getattr(func, "__func__", None) is not rng.RNG.permutation \
                or func.__self__ is not rng._default_rng:
            return func
        n = args[0] if args else kwargs.get("n")
        return rng._permutation_of_size if self._computed_from_shapes(n) else func

    def _computed_from_shapes(self, value):
        """Whether ``value`` is a tensor this graph computed from ``x.shape`` sizes alone (and
        Python numbers): an int in the module the forward belongs to."""
        if not (isinstance(value, Tensor) and value.ndim == 0 and self.known(value)):
            return False
        todo, seen = [self.scope.values[id(value)][1]], set()
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            expr = node.expr
            if isinstance(expr, ShapeOf):
                continue
            if not isinstance(expr, (CallMethod, CallFunction)) or any(
                    isinstance(n, ModuleNode) for n in expr.inputs):
                return False  # (an input, attribute, constant, op or module call)
            todo.extend(expr.inputs)
        return True

    def record_method(self, name, orig, obj, args, kwargs):
        if self.surgery and len(self.scopes) == 1 and isinstance(obj, Node):
            obj = self._to_values((obj,), {})[0][0]
        args, kwargs = self._shape_tensors(args, kwargs)
        if _in_place(name) and self.known(obj) and self.scope.values[id(obj)][1] in self.shared:
            # one of the tensors that stand for this node is updated in place: the others keep
            # their value, as here, when the step writes into a copy (F.copy: a new tensor of
            # the same array) that then stands for this one
            self.alias(obj, self.node_of(self.record_function(_copy, (obj,), {})))
        args, kwargs = _with_defaults(orig, (obj,) + tuple(args), kwargs, method=True)
        return self._record(CallMethod(None, name), args[1:], kwargs,
                            lambda *a, **k: orig(obj, *a, **k), self_obj=obj)

    def record_shape(self, tensor, shape):
        """``x.shape`` of a traced tensor: one recorded shape tensor (upstream's GetVarShape,
        a `ShapeOf` step) whose sizes are recorded reads ``shape_tensor[i]``, given back as a
        `_TracedShape` (a `megengine.core._trace_option.Shape`), so that what the forward
        computes from sizes follows the shape of the input a call is given."""
        from ..core._imperative_rt.core2 import apply
        from ..core._imperative_rt.ops import GetVarShape

        (shape_tensor,) = self.apply_hook._record(
            GetVarShape(), [tensor], lambda: apply(GetVarShape(), tensor), expr_type=ShapeOf)
        expr = self.scope.values[id(shape_tensor)][1].expr
        return _TracedShape.reading(shape_tensor, expr, len(shape))

    def record_tensor_init(self, tensor, args, kwargs):
        """``Tensor(traced, ...)``: a CallFunction of the class, whose output is ``tensor``."""
        leaves, arg_def = tree_flatten((args, kwargs), lambda x: isinstance(x, (Tensor, Module)))
        expr = CallFunction(type(tensor))
        expr.add_inputs([self.node_of(x) for x in leaves])
        expr.arg_def = arg_def
        expr.out_def = flat_outputs(tensor)[1]
        expr.outputs = [TensorNode(expr, shape=tensor.shape, dtype=tensor.dtype,
                                   device=tensor._device)]
        self.scope.emit(expr)
        self.bind(tensor, expr.outputs[0])
        self.check(expr, [tensor])

    def call_module(self, module, args, kwargs, orig_call):
        if not self.is_traced(module):
            # a module that is no attribute (a module-level ``RELU = M.ReLU()``, an inline
            # ``M.Sigmoid()(x)``) is traced into, as upstream: its steps are recorded here and
            # its tensors are constants (``nn.relu(x, )``)
            self.patch_globals_of(type(module).forward)
            return orig_call(module, *args, **kwargs)
        expr = CallMethod(None, "__call__")
        reads = self.scope.reads.get(id(module))
        if reads:  # the latest read of the module not yet called is the one called
            node = reads.pop()
            expr._callee_name = self.scope.call_names[node]
            self.bind(module, node)
        else:
            expr._callee_name = self.scope.call_names.get(id(module))
            key = self.scope.attr_key(module)
            if key and self.known(module) and isinstance(
                    vars(self.scope.module).get(key.split(".")[0]), (list, dict)):
                # a module of a list or dict attribute called again: a name of its own, as
                # upstream names each read of it (``self.bs[0](self.bs[1](self.bs[0](x)))``)
                expr._callee_name = self.scope.graph._namespace.reserve(key.replace(".", "_"))
        # as upstream records a module call: forward's parameters positional, defaults filled
        # in (``self.mm(y, shift=4.0)`` is ``mm(y, 2.0, 4.0, )``)
        from .traced_module import _call_spec, _normalize_args

        try:
            args, kwargs = _normalize_args(_call_spec(module), args, kwargs)
        except TypeError:
            pass  # a bad call: the call itself says what is wrong
        if is_builtin(module):
            return self._record(expr, args, kwargs,
                                lambda *a, **k: orig_call(module, *a, **k), self_obj=module)
        # (a traced x.shape given to it is an input of its graph: the shape tensor, as upstream)
        return self._record(expr, args, kwargs,
                            lambda *a, **k: self._trace_user_call(module, a, k, orig_call),
                            self_obj=module, shape_inputs=True)

    def _trace_user_call(self, module, args, kwargs, orig_call):
        """Run a user module's call (hooks included) with its forward traced into a graph
        of its own; runs at depth 1 (called from `_record`), forward at depth 0."""
        forward = module.forward

        def traced_forward(*a, **k):
            self.depth -= 1
            try:
                return self.trace_forward(module, a, k, forward=forward)
            finally:
                self.depth += 1

        # Module.__call__ looks forward up on the instance: shadow it for this one call.
        had_own = "forward" in module.__dict__
        object.__setattr__(module, "forward", traced_forward)
        try:
            return orig_call(module, *args, **kwargs)
        finally:
            if had_own:
                object.__setattr__(module, "forward", forward)
            else:
                object.__delattr__(module, "forward")

    def trace_forward(self, module, args, kwargs, forward=None):
        """Trace ``forward(*args, **kwargs)`` (default ``module.forward``) into a new graph of
        ``module``; return its result."""
        from .graph import InternalGraph
        from .traced_module import _call_spec, _graph_key, _normalize_args

        if forward is None:
            forward = module.forward
        next_ids = (Node._get_next_id(), Expr._get_next_id())
        spec = _call_spec(module)
        parent = self.scopes[-1] if self.scopes else None
        # a traced x.shape given to the call is one input, its shape tensor (as the caller's
        # step records it), which forward sees as a shape whose sizes this graph reads
        shapes, shapes_def = tree_flatten((args, kwargs), self._own_shape) if parent \
            else ([], None)
        given = shapes_def.unflatten([s._tensor for s in shapes]) if shapes else (args, kwargs)
        nargs, nkwargs = _normalize_args(spec, *given)
        leaves, key = _graph_key(nargs, nkwargs)
        if parent is None:
            name = qualname = type(module).__name__
        else:
            attr = parent.attr_key(module) or type(module).__name__.lower()
            name = f"{parent.graph._name}_{attr.replace('.', '_')}"
            qualname = f"{parent.graph._qualname}.{attr}"
        graph = InternalGraph(name, qualname)
        graph._top_graph = parent.graph if parent is not None else None
        self_expr = Input("self", ModuleNode, qualname, owner=module)
        scope = _Scope(graph, module, self_expr.outputs[0])
        self.scopes.append(scope)
        try:
            scope_inputs = [self_expr.outputs[0]]
            self_expr._top_graph = graph
            self_expr.outputs[0]._top_graph = graph
            graph._namespace.auto_name(self_expr)
            names = _input_names(spec, nargs, nkwargs, leaves)
            self.depth += 1  # (a tensor given twice is known by its second Input: the shape
            try:             # read for it is no step, as upstream records none)
                in_shapes = [value.shape for value in leaves]
            finally:
                self.depth -= 1
            for value, pname, shape in zip(leaves, names, in_shapes):
                expr = Input(pname, TensorNode, f"{qualname}.[{pname}]", shape=shape,
                             dtype=value.dtype, device=value._device)
                expr._top_graph = graph
                expr.outputs[0]._top_graph = graph
                graph._namespace.auto_name(expr)
                scope_inputs.append(expr.outputs[0])
                self.bind(value, expr.outputs[0])
            graph._inputs = scope_inputs
            if shapes:
                args, kwargs = shapes_def.unflatten([_TracedShape.reading(
                    s._tensor, s._expr, tuple.__len__(s), given=True) for s in shapes])
            self.patch_globals_of(forward)
            # functions kept on the instance (``self.add = F.add``) are seen too
            self._patch_namespace(vars(module), _wrapper_of)
            if type(module).forward is _sequential_forward():
                # without its cached call order, forward reads all its layers before calling
                # the first, as upstream's Sequential.forward does (their getattrs come first)
                module.__dict__.pop("_call_order", None)
            result = forward(*args, **kwargs)
            out_leaves, out_def = tree_flatten(result, lambda x: isinstance(x, Tensor))
            for leaf in _const_leaves(out_def):
                if isinstance(leaf, (Module, Node)):
                    raise TypeError(f"{type(module).__name__}.forward returned a "
                                    f"{type(leaf).__name__}: traced outputs are tensors")
            graph._outputs = [self.node_of(t) for t in out_leaves]
        finally:
            self.scopes.pop()
        for expr in list(scope.unnamed):  # (read ahead, never used: dropped next)
            scope.name_on_use(expr.outputs[0])
        _drop_dead_pure(graph)
        record = self.records.get(id(module))
        if record is None:
            record = self.records[id(module)] = _ModuleRecord(module)
        if key not in record.graphs:  # a second call with the same structure reuses the first
            record.graphs[key] = graph
            record.outdefs[key] = out_def
        elif self.surgery:  # (its graph, dropped, takes no ids: upstream traces it once)
            Node._set_next_id(next_ids[0])
            Expr._set_next_id(next_ids[1])
        return result


def _is_pure(expr):
    if isinstance(expr, (GetAttr, Constant)):
        return True
    if isinstance(expr, ShapeOf):  # kept when it checks the number of dims on each call
        return not expr.fixed_ndim
    if isinstance(expr, CallMethod) and not isinstance(expr.inputs[0], ModuleNode):
        return not _in_place(expr.method)
    return False


_IN_PLACE = frozenset(["__setitem__"] + [f"__i{n}__" for n in _BINARY])


def _in_place(method):
    """Whether the tensor method ``method`` writes into its tensor (``x[i] = v``, ``x += 1``)."""
    return method in _IN_PLACE


def _written_root(node):
    """The node whose tensor a write into ``node`` changes: back through the in-place writes
    that made ``node`` (``h += 1`` then ``h[0] = v`` both write the tensor ``h`` was)."""
    while isinstance(node.expr, CallMethod) and _in_place(node.expr.method):
        node = node.expr.inputs[0]
    return node


def _write_outlives_call(node):
    """Whether a write into ``node`` changes a tensor the call does not own: a graph input, an
    attribute or a captured tensor (the caller or the next call sees the write)."""
    return isinstance(_written_root(node).expr, (Input, GetAttr, Constant))


def _drop_dead_pure(graph):
    """Drop the side-effect-free steps nobody uses (``x.shape`` read for an assert, a
    comparison in an ``if``): what is left runs on every call. Module and function calls,
    ops and in-place writes always stay."""
    outputs = set(id(n) for n in graph._outputs)
    changed = True
    while changed:
        changed = False
        for expr in reversed(list(graph._exprs)):
            if _is_pure(expr) and not any(n.users or id(n) in outputs for n in expr.outputs):
                graph._exprs.remove(expr)
                for n in expr.inputs:
                    if expr in n.users:
                        n.users.remove(expr)
                for n in expr.outputs:
                    graph._namespace.release(n)
                changed = True


def _const_leaves(tree):
    if tree.kind == "const":
        yield tree.aux
    for c in tree.children:
        yield from _const_leaves(c)


def _input_names(spec, args, kwargs, leaves):
    """Names of the tensor inputs, as upstream names them: a tensor argument by its parameter
    (``x``), a tensor inside a nested argument by the parameter and its index among the
    argument's flattened values (``pairs_1``; a dict's values in the order of its sorted
    keys), the extra positional and keyword arguments as the ``*args``/``**kwargs``
    parameter holds them (``args_0``, ``kwargs_0``)."""
    from .traced_module import _sorted_dicts

    params = list(spec.args[1:]) if spec is not None else []
    varargs = (spec.varargs if spec is not None else None) or "args"
    varkw = (spec.varkw if spec is not None else None) or "kwargs"
    kwonly = set(spec.kwonlyargs) if spec is not None else set()
    names = []

    def add(name, value, first=0):
        if isinstance(value, Tensor):
            names.append(name)
            return 1
        # (every value a leaf, as upstream indexes them; dicts in sorted key order)
        values = tree_flatten(_sorted_dicts(value))[0]
        names.extend(f"{name}_{first + i}" for i, v in enumerate(values)
                     if isinstance(v, Tensor))
        return len(values)

    for i, a in enumerate(args[:len(params)]):
        add(params[i], a)
    if len(args) > len(params):
        add(varargs, tuple(args[len(params):]))
    extra_index = 0  # (the leaves follow the sorted keys: kwonly and extra ones mixed)
    for k in _sorted_dicts(kwargs):
        if k in kwonly:
            add(k, kwargs[k])
        else:
            extra_index += add(varkw, [kwargs[k]], extra_index)
    if len(names) != len(leaves):  # structures the walk does not know: plain
        names = [f"arg_{i}" for i in range(len(leaves))]
    return names


class _TracedShape(_trace_option.Shape):
    """``x.shape`` while tracing: its sizes are recorded reads ``shape_tensor[i]`` of one
    recorded shape tensor, so what the forward computes from them follows the input's shape.
    ``x.shape[-k]`` reads ``shape_tensor[-k]``, the k-th size from the end at any number of
    dims. A use of the shape as a whole (unpacking, ``len``, slices, comparisons,
    concatenation, ``numpy()``) counts the traced dims: the `ShapeOf` step then refuses
    inputs of another number of dims (``fixed_ndim``). ``astype`` is the shape tensor.
    A module given ``x.shape`` sees one of these too, reading the shape tensor its graph
    takes (``given``): the `ShapeOf` of the caller's graph keeps which sizes it reads."""

    def __new__(cls, tensor, expr, sizes, given=False):
        self = super().__new__(cls, sizes)
        self._tensor, self._expr, self._given = tensor, expr, given
        return self

    @classmethod
    def reading(cls, shape_tensor, expr, ndim, given=False):
        """The shape whose sizes are recorded reads of ``shape_tensor`` (of the current
        graph), made by ``expr`` (a `ShapeOf`, of an outer graph when ``given``)."""
        # every size is read now, as its step must come before what uses it; only the sizes
        # used take a name (upstream reads a size where the forward does: the names match)
        scope = _active.scope
        scope.defer_names = True
        try:
            sizes = [shape_tensor[i] for i in range(ndim)]
        finally:
            scope.defer_names = False
        return cls(shape_tensor, expr, sizes, given)

    def _whole(self):
        self._expr.fixed_ndim = True

    def __getitem__(self, index):
        ndim = tuple.__len__(self)
        if not _trace_option._int_like(index):
            self._whole()
        elif self._given and -ndim <= index < ndim:
            self._expr.read_by_call(int(index))
        if _trace_option._int_like(index) and -ndim <= index < 0:
            return self._tensor[index]  # (recorded)
        got = super().__getitem__(index)
        _name_read(got if isinstance(got, tuple) else (got,))
        return got

    def __iter__(self):  # unpacking counts the dims and reads every size, in order
        self._whole()
        _name_read(tuple.__iter__(self))
        return _trace_option.Shape.__iter__(self)

    def __radd__(self, other):
        self._whole()
        return other + tuple(self)

    def astype(self, dtype):
        if np.dtype(dtype) == np.int32:  # (as core2.apply takes it: upstream's shape Tensor)
            return self._tensor
        return self._tensor.astype(dtype)  # (recorded)


def _name_read(sizes):
    """The forward read ``sizes`` (of a `_TracedShape`): they take their names now, in the
    order read, as upstream names a size where it is read."""
    tracer = _active
    if tracer is None or not tracer.scopes:
        return
    scope = tracer.scope
    for size in sizes:
        entry = scope.values.get(id(size))
        if entry is not None and entry[0] is size:
            scope.name_on_use(entry[1])


def _whole_use(name):
    base = getattr(_trace_option.Shape, name)

    def method(self, *args, **kwargs):
        self._whole()
        return base(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in ("__len__", "__contains__", "__add__", "__mul__", "__rmul__",
              "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "count", "index",
              "numpy", "tolist", "item", "__array__", "__array_function__"):
    setattr(_TracedShape, _name, _whole_use(_name))


class _ApplyHook:
    """``dispatch._trace_hook`` while tracing: ops on traced tensors outside any recorded
    call become `Apply` exprs; events (GradManager, optimizer steps) just run."""

    def __init__(self, tracer):
        self.tracer = tracer

    def __call__(self, op, inputs):
        import copy

        tracer = self.tracer
        dispatch._trace_hook = None
        try:
            if tracer.depth or not tracer.scopes or not any(tracer.is_traced(t) for t in inputs):
                if not tracer.depth and tracer.scopes and _is_draw(op):
                    raise _frozen_draw_error(op)
                return dispatch.apply(op, *inputs)
            return self._record(copy.copy(op), inputs,  # (copied before forward stores
                                lambda: dispatch.apply(op, *inputs))  # anything on it)
        finally:
            dispatch._trace_hook = self

    def record_opdef(self, opdef, inputs, lower):
        """``apply(descriptor, *tensors)`` (megengine.core._imperative_rt.core2): one `Apply`
        of the descriptor, as upstream records it, whatever ops it is lowered onto."""
        import copy

        tracer = self.tracer
        if tracer.depth or not tracer.scopes or not any(tracer.is_traced(t) for t in inputs):
            return lower(opdef, inputs)
        return self._record(copy.copy(opdef), inputs, lambda: lower(opdef, inputs))

    def _record(self, template, inputs, run, expr_type=Apply):
        tracer = self.tracer
        tracer.depth += 1
        try:
            nodes = [tracer.node_of(t) for t in inputs]
            out = run()
        finally:
            tracer.depth -= 1
        expr = expr_type(template)
        expr.add_inputs(nodes)
        expr.arg_def = tree_flatten((tuple(nodes), {}), lambda x: isinstance(x, Node))[1]
        outs = out if isinstance(out, tuple) else (out,)
        expr.out_def = flat_outputs(out)[1]
        expr.outputs = [TensorNode(expr, shape=t.shape, dtype=t.dtype, device=t._device)
                        for t in outs]
        tracer.scope.emit(expr)
        for t, n in zip(outs, expr.outputs):
            tracer.bind(t, n)
        tracer.check(expr, outs)
        return out

    def event(self, fn, *args, **kwargs):
        tracer = self.tracer
        if fn is _RESET and not tracer.depth and tracer.scopes:
            tensor, value = args
            if tracer.is_traced(tensor):
                # `t.set_value(v)` / `t._reset(v)` in traced code: upstream's `t[...] = v` (what
                # the write is here, `Tensor.__setitem__`), recorded as that write, so each
                # call makes it (a graph input or a module's state) and later steps read it
                setitem = vars(Tensor)["__setitem__"]
                tracer.record_method("__setitem__", getattr(setitem, "__wrapped__", setitem),
                                     tensor, (Ellipsis, value), {})
                return None
            dispatch.call_without_trace_hook(fn, *args, **kwargs)
            if isinstance(value, Tensor) and tracer.is_traced(value):
                # a tensor the trace did not know takes a traced value: it stands for that
                # value's node from then on, as `adopt` makes it
                node = tracer.node_of(value)
                tracer.alias(tensor, node)
                tracer.shared.add(node)
            return None
        return dispatch.call_without_trace_hook(fn, *args, **kwargs)

    def read(self, t, value):
        """A value read to the host (``.numpy()``, ``.item()``, a shape Tensor) while tracing:
        what Python computes from it is a constant of the graph, as with upstream's tracer."""


def _is_draw(op):
    """Whether ``op`` draws random numbers (an op of megengine.random)."""
    from ..random import rng

    return isinstance(op, (rng._Draw, rng._Multinomial, rng._Shuffled))


def _frozen_draw_error(op):
    """A draw in a traced forward that no recorded call made: its value would be a constant of
    the graph, the same on every call, so it is refused."""
    from ..random import rng

    if getattr(op, "rng", None) is rng._default_rng:  # megengine.random's, under another name
        where = ("in code trace_module does not record (a helper that keeps megengine.random's "
                 "functions under its own names, such as megengine.distributions' sample)")
        todo = "call megengine.random's functions in forward, make the helper one step with " \
               "megengine.traced_module.wrap"
    else:
        where = "with a method of a megengine.random.RNG object, which trace_module does not " \
                "record"
        todo = "draw with megengine.random's module-level functions (megengine.random." \
               "uniform, normal, permutation, ...), which are recorded and draw anew on every " \
               "call"
    return TypeError(
        f"trace_module: forward draws random numbers ({op!r}) {where}; the traced module "
        f"would repeat this draw on every call. To trace it, {todo}, or draw outside forward "
        "and pass the values in")


def _tensor_method_wrapper(name, orig):
    def method(self, *args, **kwargs):
        tracer = _active
        if tracer is None or tracer.depth:
            return orig(self, *args, **kwargs)
        return tracer.record_method(name, orig, self, args, kwargs)

    method.__name__ = name
    method.__wrapped__ = orig
    return method


def _shape_wrapper(fget):
    def shape(self):
        tracer = _active
        value = fget(self)
        if tracer is None or tracer.depth or not tracer.scopes or not tracer.is_traced(self):
            return value
        return tracer.record_shape(self, value)

    return shape


def _name_setter_wrapper(fset):
    """``tensor.name = ...`` in traced code names the tensor's node, as upstream's graphs
    take the names users give tensors in ``forward``."""
    def set_name(self, value):
        fset(self, value)
        tracer = _active
        if tracer is None or tracer.depth or not tracer.scopes or not value \
                or not tracer.known(self):
            return
        node = tracer.scope.values[id(self)][1]
        if not isinstance(node.expr, (Input, GetAttr)):  # arguments and attributes keep theirs
            tracer.scope.graph._namespace.rename(node, value)

    return set_name


def _untraced_wrapper(orig):
    """A Tensor method that returns a Python value: what it does inside is not recorded."""
    def method(self, *args, **kwargs):
        tracer = _active
        if tracer is None:
            return orig(self, *args, **kwargs)
        tracer.depth += 1
        try:
            return orig(self, *args, **kwargs)
        finally:
            tracer.depth -= 1

    method.__wrapped__ = orig
    return method


def _tensor_init_wrapper(orig):
    def __init__(self, *args, **kwargs):
        tracer = _active
        if tracer is None or tracer.depth or not tracer.scopes:
            return orig(self, *args, **kwargs)
        args, kwargs = tracer._shape_tensors(args, kwargs)  # Tensor(x.shape)
        leaves = tree_flatten((args, kwargs), lambda x: isinstance(x, Tensor))[0]
        tracer.depth += 1
        try:
            orig(self, *args, **kwargs)
        finally:
            tracer.depth -= 1
        if any(tracer.is_traced(t) for t in leaves):  # made from traced tensors: a step
            tracer.record_tensor_init(self, args, kwargs)

    __init__.__wrapped__ = orig
    return __init__


def _holds_module(container):
    values = container.values() if isinstance(container, dict) else container
    return any(isinstance(v, Module) or (isinstance(v, (list, dict)) and _holds_module(v))
               for v in values)


def _module_getattribute_wrapper(orig):
    def __getattribute__(self, name):
        value = orig(self, name)
        if isinstance(value, (Tensor, Module, list, dict)):
            tracer = _active
            # (an attribute the instance holds, as upstream: a property's value is read by
            # the property itself)
            if tracer is not None and not tracer.depth and tracer.scopes \
                    and not (tracer.surgery and len(tracer.scopes) == 1) \
                    and name in orig(self, "__dict__"):
                if isinstance(value, (Tensor, Module)):
                    tracer.read_attribute(value, self, name)
                elif self is tracer.scope.module and _holds_module(value):
                    tracer.read_container(name)
        return value

    return __getattribute__


def _sequential_forward():
    from ..module.sequential import Sequential
    return Sequential.forward


def _module_call_wrapper(orig):
    def __call__(self, *args, **kwargs):
        tracer = _active
        if tracer is None or tracer.depth or not tracer.scopes:
            return orig(self, *args, **kwargs)
        return tracer.call_module(self, args, kwargs, orig)

    __call__.__wrapped__ = orig
    return __call__


# ----- insert_exprs entry points (used by node.py) -----
def _surgery_call_method(name, node, args, kwargs):
    orig = getattr(vars(Tensor)[name], "__wrapped__", vars(Tensor)[name])
    return _active.record_method(name, orig, node, args, kwargs)


def _surgery_call_module(node, args, kwargs):
    tracer = _active
    tracer.bind(node.owner, node)
    args, kwargs = tracer._to_values(args, kwargs)
    result = node.owner(*args, **kwargs)  # the patched Module.__call__ records it
    return tracer._to_nodes(result)


def _surgery_getattr(node, name):
    tracer = _active
    owner = node.owner
    value = getattr(owner, name)
    if not isinstance(value, (Tensor, Module)):
        return value
    if isinstance(value, Module) and not is_builtin(value) and tracer.known(value):
        return tracer.node_of(value)  # (a user module read again in this edit: its node, as
        # upstream's; a layer read again gets a getattr of its own, as there)
    # a chain of reads from the graph's self node is one getattr of the dotted path, as
    # upstream records it (``self_node.w.a`` is ``getattr(self, "w.a")``, named w_a)
    base, path, source = node, name, node.expr
    if isinstance(source, GetAttr) and source.inputs[0] is tracer.scope.self_node:
        base, path = source.inputs[0], f"{source.name}.{name}"
    # upstream records a tensor read through a module node other than the graph's self node
    # twice (its module builder's getattr, then the node's), and compile merges the second
    # into the first: the same here, so ids and names follow upstream's
    twice = isinstance(value, Tensor) and node is not tracer.scope.self_node
    tracer.depth += 1
    try:
        for _ in range(1 + twice):
            expr = GetAttr(base, path, value)
            tracer.scope.emit(expr)
    finally:
        tracer.depth -= 1
    out = expr.outputs[0]
    if isinstance(value, Tensor):
        out.value = value
    tracer.read_attrs.add(id(value))
    # a read here keeps the attribute when ``owner``, a module first called here, is built
    # (its build keeps only what forward read: ``node.neg.relu`` after ``node.neg(x)``)
    tracer.read_order.setdefault(id(owner), {})[name] = None
    tracer.bind(value, out)
    return out
