"""How `trace.dump` names a program's inputs, outputs and constants, as upstream does: inputs
``arg_<i>`` / ``kwarg_<name>``, outputs ``output_<i>`` (a dict output by its keys), parameters and
buffers by their module path (``conv1.bias``); names given by the caller are checked."""
from ._program import _Ref, _Struct, _TensorLeaf, _ValueLeaf
from .dump_format import DumpError


def _names(given, default, what):
    if given is None:
        return list(default)
    if isinstance(given, str):
        given = [given]
    given = list(given)
    if len(given) != len(default):
        raise ValueError(f"wrong number of {what}, should be {len(default)} values")
    if len(set(given)) != len(given):
        raise ValueError(f"dump: {what} must be distinct, got {given}")
    return given


def _input_defaults(in_tree):
    """Default input names, in `_flatten` order: ``arg_<i>`` (``arg_<i>_<j>`` nested), and
    ``kwarg_<name>`` for keyword arguments, as upstream names them."""
    names = []

    def walk(node, prefix):
        if type(node) is _TensorLeaf:
            names.append(prefix)
        elif type(node) is tuple and len(node) == 2:
            for i, x in enumerate(node[1]):
                walk(x, f"{prefix}_{i}")
        elif type(node) is tuple and len(node) == 3:
            for k, x in zip(node[1], node[2]):
                walk(x, f"{prefix}_{k}")

    (_, (args, kwargs)) = in_tree
    for i, x in enumerate(args[1]):
        walk(x, f"arg_{i}")
    for k, x in zip(kwargs[1], kwargs[2]):
        walk(x, f"kwarg_{k}")
    return names


def _output_slots(out):
    """(default names, slots) of the traced outputs; a dict output is named by its sorted keys."""
    if type(out) is _Ref:
        return ["output_0"], [out.slot]
    if type(out) is dict or (type(out) is _Struct and out.keys is not None):
        items = out.items() if type(out) is dict else zip(out.keys, out.items)
        items = sorted(items, key=lambda kv: str(kv[0]))
        if not all(type(v) is _Ref for _, v in items):
            raise DumpError("dump: every value of a dict output must be a tensor")
        return [str(k) for k, _ in items], [v.slot for _, v in items]
    leaves = []

    def walk(v):  # nested tuples/lists (a namedtuple too), flattened in order
        if type(v) is _Ref:
            leaves.append(v.slot)
        elif type(v) in (tuple, list) or (type(v) is _Struct and v.keys is None):
            for x in (v.items if type(v) is _Struct else v):
                walk(x)
        else:
            raise DumpError("dump: the traced function must return a tensor, or a tuple, list "
                            f"or dict of tensors; it returned a {type(v).__name__} among them")

    walk(out)
    return [f"output_{i}" for i in range(len(leaves))], leaves


def _leaves(in_tree):
    out = []

    def walk(node):
        if type(node) is _TensorLeaf:
            out.append(node)
        elif type(node) is tuple and len(node) == 2 and isinstance(node[0], type):
            for x in node[1]:
                walk(x)
        elif type(node) is tuple and len(node) == 3:
            for x in node[2]:
                walk(x)

    walk(in_tree)
    return out


def _param_names(function, in_tree):
    """{id(tensor): name} for the parameters and buffers of the Modules the traced function
    refers to (the function itself, its bound instance, its closure, its module-level names,
    and Modules passed as arguments), named by their path as upstream's auto-naming names
    them: ``conv1.bias``, prefixed by a top module's own name when it has one, and ending in a
    tensor's own name when it was given one (``simple.linear.user-weight``)."""
    from ..module import Module
    roots = []

    def add(obj):
        if isinstance(obj, Module) and all(obj is not r for r in roots):
            roots.append(obj)

    def walk_tree(node):
        if type(node) is tuple:
            for x in node:
                walk_tree(x)
        elif type(node) is _ValueLeaf:  # (a Module argument is held weakly: `_program._kept`)
            add(node.held())

    add(function)
    add(getattr(function, "__self__", None))
    walk_tree(in_tree)
    for cell in getattr(function, "__closure__", None) or ():
        try:
            add(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    for v in list(getattr(function, "__globals__", {}).values()):
        add(v)
    names = {}
    for root in roots:
        top = root.name if isinstance(getattr(root, "name", None), str) else None
        for path, module in root.named_modules():
            prefix = ".".join(p for p in (top, path) if p)
            for attr, t in module.named_tensors(recursive=False):
                own = getattr(t, "_name", None)
                names.setdefault(id(t), ".".join(p for p in (prefix, own or attr) if p))
    return names
