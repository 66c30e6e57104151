"""Loaders: functions run on the exprs of a traced module when it is unpickled (upstream's
``traced_module.serialization``), to bring a pickle made by older code up to date.

Register one for an op descriptor class (`register_opdef_loader`), a functional function by
``(module, name)`` (`register_functional_loader`), a tensor method by name
(`register_tensor_method_loader`) or a module class by ``(module, class name)``
(`register_module_loader`). A loader may change the expr's arguments (``set_args_kwargs``,
``set_arg``, ``inputs``), an ``Apply``'s ``opdef_state`` (the descriptor's parameters, its
class under ``"opdef_type"``) or outputs, and make new exprs whose outputs the expr reads: the
load puts those into the graph before the expr and recounts every node's users.
"""
import importlib

from ._upstream import _ModuleState  # noqa: F401 (upstream's pickles name it here)
from .expr import Apply, CallFunction, CallMethod, Input, is_call_module

__all__ = ["register_opdef_loader", "register_functional_loader",
           "register_tensor_method_loader", "register_module_loader"]

OPDEF_LOADER = {}  # op descriptor class -> loader
FUNCTIONAL_LOADER = {}  # (module, name) -> loader
TENSORMETHOD_LOADER = {}  # method name -> loader
MODULE_LOADER = {}  # (module, class name) -> loader


def _registrar(name, table_name, what):
    def register(*keys):
        def add(loader):
            table = globals()[table_name]  # looked up now: a caller may have replaced it
            for key in keys:
                if key in table:
                    raise ValueError(f"a loader for the {what} {key!r} is already registered "
                                     f"({table[key].__name__}): register one loader per {what}")
            for key in keys:
                table[key] = loader
            return loader

        return add

    register.__name__ = register.__qualname__ = name
    register.__doc__ = f"``@{name}(*keys)``: run the decorated function on each unpickled " \
                       f"expr of these {what}es."
    return register


register_opdef_loader = _registrar("register_opdef_loader", "OPDEF_LOADER",
                                   "op descriptor class")
register_functional_loader = _registrar("register_functional_loader", "FUNCTIONAL_LOADER",
                                        "function (module, name)")
register_tensor_method_loader = _registrar("register_tensor_method_loader",
                                           "TENSORMETHOD_LOADER", "tensor method")
register_module_loader = _registrar("register_module_loader", "MODULE_LOADER",
                                    "module class (module, name)")


def _named(key):
    """The object a ``(module, dotted name)`` key names, or None."""
    try:
        obj = importlib.import_module(key[0])
        for part in key[1].split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, TypeError, IndexError):
        return None
    return obj


def _loader_of(table, obj):
    """The loader of a function or class: by its own (module, qualified name), else by any key
    naming the same object (``("megengine.functional.nn", "conv2d")`` names F.conv2d, whose
    home here is ``megengine.functional.conv``)."""
    key = (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
    if key in table:
        return table[key]
    for k, loader in table.items():
        if isinstance(k, tuple) and len(k) == 2 and _named(k) is obj:
            return loader
    return None


def _opdef_state(op):
    """Upstream's form of a descriptor's parameters: enum members by their upper-case name."""
    state = {}
    for name, _ in type(op)._params:
        value = getattr(op, name)
        state[name] = value.name if type(op)._enums.get(name) is not None else value
    state["opdef_type"] = type(op)
    return state


def _run_loader(expr):
    """Run the loader registered for ``expr``, if any; True when one ran."""
    if isinstance(expr, CallFunction):
        loader = _loader_of(FUNCTIONAL_LOADER, expr.func)
    elif is_call_module(expr):
        loader = _loader_of(MODULE_LOADER, expr.inputs[0].module_type)
    elif isinstance(expr, CallMethod):
        loader = TENSORMETHOD_LOADER.get(expr.method)
    elif isinstance(expr, Apply) and hasattr(type(expr.op), "_params"):
        loader = OPDEF_LOADER.get(type(expr.op))
        if loader is not None:
            expr.opdef_state = _opdef_state(expr.op)
            loader(expr)
            state = dict(expr.opdef_state)
            op_type = state.pop("opdef_type")
            expr.op = op_type(**state)
            return True
    else:
        loader = None
    if loader is None:
        return False
    loader(expr)
    return True


def _settle(graph):
    """Put exprs that loaders made into ``graph`` before their first reader, name their
    outputs, and recount the users of every node from the exprs that read it."""
    present = {id(e) for e in graph._exprs}
    settled = []

    def place(expr):
        for n in expr.inputs:
            made_by = n.expr
            if made_by is not None and id(made_by) not in present \
                    and not isinstance(made_by, Input):
                present.add(id(made_by))
                place(made_by)
                made_by._top_graph = graph
                for out in made_by.outputs:
                    out._top_graph = graph
                graph._namespace.auto_name(made_by)
        settled.append(expr)

    for expr in graph._exprs:
        place(expr)
    graph._exprs[:] = settled
    nodes = list(graph._inputs) + [n for e in settled for n in e.inputs + e.outputs]
    for n in nodes:
        n.users = []
    for e in settled:
        for n in e.inputs:  # once per reading (x + x reads x twice)
            n.users.append(e)


def run_loaders(module):
    """Run the registered loaders on the exprs of ``module``'s own graphs (its traced
    submodules run theirs when they are unpickled)."""
    if not (OPDEF_LOADER or FUNCTIONAL_LOADER or TENSORMETHOD_LOADER or MODULE_LOADER):
        return
    for graph in module.argdef_graph_map.values():
        changed = False
        for expr in list(graph._exprs):
            changed = _run_loader(expr) or changed
        if changed:
            _settle(graph)
            graph._root()._reset_ids()

