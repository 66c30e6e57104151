"""Graph passes over a TracedModule for inference: ``optimize(module, passes)`` returns an
optimized copy. ``"FuseConvBn"`` (here) folds eval-mode batch norms into the convolutions before
them; ``"FuseAddMul"`` and ``"BackwardFoldScale"`` (`_scale_passes`) fold constant arithmetic.

FuseConvBn: in every graph of the module, a convolution whose output feeds only an eval-mode
batch norm is fused with it. The convolution may be a ``Conv2d`` module call (megengine's own
layer) or an ``F.conv2d`` step reading its weight and bias through getattrs (what a traced-into
subclass of Conv2d records); the batch norm a ``BatchNorm2d`` module call or an
``F.batch_norm(..., training=False)`` step reading its statistics through getattrs. The batch
norm step goes and the convolution's output takes its place (`megengine.utils.bn_fusion`'s
``fold_weight_bias`` does the arithmetic).

As upstream, the copy's attributes change in place: the fused Conv2d takes the old one's
attribute, the folded weight and bias the old tensors' attributes, so node and attribute names
stay. A layer or tensor the graph reads more than once cannot change for one reader: the new one
becomes ``<attribute>_1`` (``_2``, ...) and a warning says so.
"""
import copy
import logging
from typing import Sequence, Union

from .. import functional as F
from ..core.tensor import Parameter
from ..module.batchnorm import BatchNorm2d
from ..module.conv import Conv2d
from ..module.module import Module, _access_structure, _expand_structure
from ._scale_passes import backward_fold_scale, fuse_add_mul, written_values
from .expr import CallFunction, GetAttr, is_call_module
from .node import TensorNode

__all__ = ["optimize"]

logger = logging.getLogger(__name__)

# upstream's order: FuseConvBn, FuseAddMul; then BackwardFoldScale and FuseAddMul again
_PASSES = ("FuseConvBn", "FuseAddMul", "BackwardFoldScale")


def optimize(module, enabled_pass: Union[str, Sequence[str]] = ("FuseConvBn",)):
    """Return a copy of the TracedModule ``module`` with the passes named in ``enabled_pass``
    run on its graph and the graphs it calls (``module`` itself is left as it was).

    Passes: ``"FuseConvBn"`` (fold eval-mode batch norms into convolutions), ``"FuseAddMul"``
    (merge adjacent additions or multiplications by constants), ``"BackwardFoldScale"`` (move
    multiplications by constants into the convolutions before them; it needs FuseConvBn and
    turns it on, with a warning, as upstream)."""
    from .traced_module import TracedModule

    if not isinstance(module, TracedModule):
        raise TypeError(f"optimize expects a TracedModule (trace_module(...)), got "
                        f"{type(module).__name__}")
    names = [enabled_pass] if isinstance(enabled_pass, str) else list(enabled_pass)
    for name in names:
        if name not in _PASSES:
            raise ValueError(f"optimize: unknown pass {name!r}; the passes are {list(_PASSES)}")
    if "BackwardFoldScale" in names and "FuseConvBn" not in names:
        logger.warning("Since BackwardFoldScale requires FuseConvBn, FuseConvBn will be enabled.")
        names.append("FuseConvBn")
    module = copy.deepcopy(module)
    graphs = _graphs(module)
    written = written_values(graphs)  # (state the graphs write: no constant to the passes)
    fuse = lambda graph: fuse_add_mul(graph, written)  # noqa: E731
    steps = [("FuseConvBn", _fuse_conv_bn), ("FuseAddMul", fuse)]
    if "BackwardFoldScale" in names:
        steps += [("BackwardFoldScale", lambda graph: backward_fold_scale(graph, written)),
                  ("FuseAddMul", fuse)]
    for name, run in steps:
        if name in names:
            for graph in graphs:
                run(graph)
    return module


def _graphs(module):
    """The graphs of ``module`` and of the traced modules they call, callers first."""
    found, seen = [], set()
    todo = list(module.argdef_graph_map.values())
    while todo:
        graph = todo.pop(0)
        if id(graph) in seen:
            continue
        seen.add(id(graph))
        found.append(graph)
        for expr in graph._exprs:
            sub = getattr(expr, "graph", None) if is_call_module(expr) else None
            if sub is not None:
                todo.append(sub)
    return found


def _set_path(owner, path, value):
    """``owner.<path> = value`` for a dotted path."""
    parent, _, key = path.rpartition(".")
    target = _access_structure(owner, parent) if parent else owner
    if isinstance(target, (list, dict)):
        target[int(key) if isinstance(target, list) else key] = value
    else:
        setattr(target, key, value)


def _fresh_path(graph, node, what):
    """The attribute path a changed copy of ``node``'s value goes to: the same one when this
    graph reads it only once and nothing else holds it, else ``<path>_<n>`` (warned, as
    upstream)."""
    path = node.expr.name
    owner = graph.inputs[0].owner
    shared = _held_twice(owner, path)
    if len(node.users) <= 1 and not shared:
        return path
    n = 1
    while True:
        try:
            _access_structure(owner, f"{path}_{n}")
        except (AttributeError, KeyError, IndexError, ValueError):
            break
        n += 1
    why = f"is used {len(node.users)} times" if not shared else "is shared with other modules"
    logger.warning("%s %s %s and its name will be reset to %s_%d", what, node.qualname, why,
                   path, n)
    return f"{path}_{n}"


def _held_twice(owner, path):
    """Whether the value at ``path`` or a module on the way is held by two attributes in
    ``owner``'s tree (a shared layer, tied weights): changing it in place would change
    other readers too."""
    counts, todo, seen = {}, [owner], {id(owner)}
    while todo:
        module = todo.pop()
        for attr, value in vars(module).items():
            for _, leaf in _expand_structure(attr, value):
                counts[id(leaf)] = counts.get(id(leaf), 0) + 1
                if isinstance(leaf, Module) and id(leaf) not in seen:
                    seen.add(id(leaf))
                    todo.append(leaf)
    parts = path.split(".")
    return any(counts.get(id(_access_structure(owner, ".".join(parts[:i]))), 0) > 1
               for i in range(1, len(parts) + 1))


def replace_conv_module(graph, conv_expr, weight, bias):
    """Let the Conv2d call ``conv_expr`` use a copy of its layer with ``weight`` and
    ``bias`` (None: a layer without bias stays without)."""
    conv_node = conv_expr.inputs[0]
    conv = conv_node.owner
    fused = copy.deepcopy(conv)
    fused.weight = Parameter(weight.numpy(), device=weight.device)
    fused.bias = None if bias is None else Parameter(bias.numpy(), device=bias.device)
    owner = graph.inputs[0].owner
    if not isinstance(conv_node.expr, GetAttr) or conv_node.expr.inputs[0] is not graph.inputs[0]:
        raise ValueError(f"{conv_expr!r}: the layer is no attribute of the graph's module")
    path = _fresh_path(graph, conv_node, "Module")
    if path == conv_node.expr.name:
        _set_path(owner, path, fused)
        conv_node._owner = fused
        return
    # a new attribute: the copy has no name of its own yet (the old layer's would stay)
    object.__setattr__(fused, "_short_name", None)
    _set_path(owner, path, fused)
    node = _getattr_before(graph, conv_expr, path, fused)
    conv_expr.inputs[0] = node
    conv_node.users.remove(conv_expr)
    node.users.append(conv_expr)
    _drop_dead_getattr(graph, conv_node)


def set_tensor_arg(graph, expr, name, value):
    """Let the function call ``expr`` read ``value`` (as a Parameter) for its argument
    ``name``: in place of the getattr'd tensor it reads, or as a new attribute."""
    old = expr.named_args.get(name)
    param = Parameter(value.numpy(), device=value.device)
    owner = graph.inputs[0].owner
    if isinstance(old, TensorNode) and isinstance(old.expr, GetAttr) \
            and old.expr.inputs[0] is graph.inputs[0]:
        path = _fresh_path(graph, old, "Tensor")
        _set_path(owner, path, param)
        if path == old.expr.name:  # read only here: the attribute itself changes
            return
    else:  # no such argument (a conv without bias): an attribute next to the weight
        path = _new_attr(owner, _beside_weight(expr, name), param)
    node = _getattr_before(graph, expr, path, param)
    expr.set_arg(name, node)
    if isinstance(old, TensorNode):
        _drop_dead_getattr(graph, old)


def _beside_weight(expr, name):
    """``<module>.<name>`` for the module whose weight ``expr`` reads, when that module has
    no such tensor yet (a conv made with ``bias=False``), else ``<weight path>_<name>``."""
    w = expr.named_args.get("weight")
    path = w.expr.name if isinstance(w, TensorNode) and isinstance(w.expr, GetAttr) else "conv"
    parent = path.rpartition(".")[0]
    if parent:
        try:
            if _access_structure(w.top_graph.inputs[0].owner, f"{parent}.{name}") is None:
                return f"{parent}.{name}"
        except (AttributeError, KeyError, IndexError, ValueError):
            pass
    return f"{path}_{name}".replace(".", "_")


def _sole_user(node, graph):
    return len(node.users) == 1 and node not in graph.outputs


def _new_attr(owner, path, value):
    """Store ``value`` at ``path`` of ``owner`` (a free one: ``path``, else ``path_1``, ...)
    and return the path used."""
    def taken(p):
        try:
            return _access_structure(owner, p) is not None
        except (AttributeError, KeyError, IndexError, ValueError):
            return False

    name, n = path, 0
    while taken(name):
        n += 1
        name = f"{path}_{n}"
    _set_path(owner, name, value)
    return name


def _getattr_before(graph, expr, name, value):
    """A new getattr of ``self.<name>`` placed just before ``expr``; its output node."""
    new = GetAttr(graph.inputs[0], name, value)
    new._top_graph = graph
    new.outputs[0]._top_graph = graph
    graph._namespace.auto_name(new)
    graph._exprs.insert(graph._exprs.index(expr), new)
    return new.outputs[0]


def _drop(graph, bn_expr, conv_out, also=()):
    """Let the batch norm's readers read the convolution; remove the batch norm and the
    getattrs nothing reads any more (nothing else: other dead steps are the user's)."""
    graph.replace_node({bn_expr.outputs[0]: conv_out})
    graph._exprs.remove(bn_expr)
    for n in bn_expr.outputs:
        graph._namespace.release(n)
    for node in list(bn_expr.inputs) + list(also):
        node.users[:] = [u for u in node.users if u is not bn_expr]
        _drop_dead_getattr(graph, node)


def _fuse_conv_bn(graph):
    owner = graph.inputs[0].owner
    for bn_expr in list(graph._exprs):
        if bn_expr not in graph._exprs:
            continue
        found = _batch_norm(owner, bn_expr)
        if found is None:
            continue
        x, stats, eps, extra_dead = found
        if not hasattr(x, "expr") or not _sole_user(x, graph):
            continue
        conv_expr = x.expr
        if is_call_module(conv_expr) and type(conv_expr.inputs[0].owner) is Conv2d:
            _fold_into_module(graph, owner, conv_expr, stats, eps)
        elif isinstance(conv_expr, CallFunction) and conv_expr.func is F.conv2d:
            if not _fold_into_function(graph, owner, conv_expr, stats, eps):
                continue
        else:
            continue
        _drop(graph, bn_expr, x, also=extra_dead)


def _batch_norm(owner, expr):
    """(input node, (gamma, beta, mean, var), eps, nodes it reads) of an eval-mode batch
    norm step whose statistics are known, else None."""
    if is_call_module(expr) and type(expr.inputs[0].owner) is BatchNorm2d:
        bn = expr.inputs[0].owner
        args = expr.args
        if len(args) != 2 or expr.kwargs or bn.training:
            return None
        if bn.running_mean is None or bn.running_var is None:
            return None
        return args[1], (bn.weight, bn.bias, bn.running_mean, bn.running_var), bn.eps, \
            [expr.inputs[0]]
    if isinstance(expr, CallFunction) and expr.func is F.batch_norm:
        a = expr.named_args
        if a.get("training", False):
            return None
        values = []
        for key in ("weight", "bias", "running_mean", "running_var"):
            v = _value_of(owner, a.get(key))
            if v is False or (v is None and key.startswith("running")):
                return None
            values.append(v)
        return a.get("inp"), tuple(values), a.get("eps", 1e-5), []
    return None


def _fold_into_module(graph, owner, conv_expr, stats, eps):
    from ..utils.bn_fusion import fold_weight_bias

    conv = conv_expr.inputs[0].owner
    weight, bias = fold_weight_bias(conv.weight, conv.bias, *stats, eps)
    replace_conv_module(graph, conv_expr, weight, bias)


def _fold_into_function(graph, owner, conv_expr, stats, eps):
    from ..utils.bn_fusion import fold_weight_bias

    conv_args = conv_expr.named_args
    weight, bias = _value_of(owner, conv_args.get("weight")), \
        _value_of(owner, conv_args.get("bias"))
    if weight is None or weight is False or bias is False:
        return False
    weight, bias = fold_weight_bias(weight, bias, *stats, eps)
    set_tensor_arg(graph, conv_expr, "weight", weight)
    set_tensor_arg(graph, conv_expr, "bias", bias)
    return True


def _drop_dead_getattr(graph, node):
    expr = node.expr
    if isinstance(expr, GetAttr) and not node.users and node not in graph.outputs \
            and expr in graph._exprs:
        graph._exprs.remove(expr)
        expr.inputs[0].users.remove(expr)
        graph._namespace.release(node)


def _value_of(owner, node):
    """The tensor a getattr of the graph's owner reads; None for no argument; False for
    anything else (a value computed in the graph, a constant)."""
    if node is None:
        return None
    if not isinstance(node, TensorNode) or not isinstance(node.expr, GetAttr) \
            or node.expr.inputs[0] is not node.top_graph.inputs[0]:
        return False
    return _access_structure(owner, node.expr.name)
