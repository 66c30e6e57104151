"""Graph passes over a TracedModule: ``optimize(module, "FuseConvBn")`` folds eval-mode batch
norms into the convolutions before them.

In every graph of the module, a convolution whose output feeds only an eval-mode batch norm
is fused with it. The convolution may be a ``Conv2d`` module call (megengine's own layer) or
an ``F.conv2d`` step reading its weight and bias through getattrs (what a traced-into
subclass of Conv2d records); the batch norm a ``BatchNorm2d`` module call or an
``F.batch_norm(..., training=False)`` step reading its statistics through getattrs. A module
call becomes a call of a new Conv2d with the folded weight and bias; an ``F.conv2d`` step
reads new folded Parameters; the batch norm step goes (`megengine.utils.bn_fusion`'s
``fold_weight_bias`` does the arithmetic).

The passes never change a module the graph shares with others: the fused layer and the folded
Parameters are new attributes of the graph's owner (``<conv path>_fused``), and the old layers
stay where they were (unused by this graph). Only ``"FuseConvBn"`` is available; upstream's
``"BackwardFoldScale"`` and constant passes are not.
"""
import copy
from typing import Sequence, Union

from .. import functional as F
from ..core.tensor import Parameter
from ..module.batchnorm import BatchNorm2d
from ..module.conv import Conv2d
from ..module.module import _access_structure
from .expr import CallFunction, GetAttr, is_call_module
from .node import TensorNode

__all__ = ["optimize"]

_PASSES = ("FuseConvBn",)


def optimize(module, enabled_pass: Union[str, Sequence[str]] = "FuseConvBn"):
    """Run the named passes on every graph of the TracedModule ``module`` (in place) and
    return it."""
    from .traced_module import TracedModule

    if not isinstance(module, TracedModule):
        raise TypeError(f"optimize expects a TracedModule (trace_module(...)), got "
                        f"{type(module).__name__}")
    names = [enabled_pass] if isinstance(enabled_pass, str) else list(enabled_pass)
    for name in names:
        if name not in _PASSES:
            raise ValueError(f"optimize: unknown or unavailable pass {name!r}; this fork has "
                             f"{list(_PASSES)}")
    for sub in list(module.modules()):
        if isinstance(sub, TracedModule):
            for graph in list(sub.argdef_graph_map.values()):
                if "FuseConvBn" in names:
                    _fuse_conv_bn(graph)
    return module


def _sole_user(node, graph):
    return len(node.users) == 1 and node not in graph.outputs


def _new_attr(owner, base, value):
    name, n = base, 0
    while hasattr(owner, name):
        n += 1
        name = f"{base}_{n}"
    setattr(owner, name, value)
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

    conv_node = conv_expr.inputs[0]
    conv = conv_node.owner
    gamma, beta, mean, var = stats
    weight, bias = fold_weight_bias(conv.weight, conv.bias, gamma, beta, mean, var, eps)
    fused = copy.deepcopy(conv)
    fused.weight = Parameter(weight.numpy(), device=weight.device)
    fused.bias = Parameter(bias.numpy(), device=bias.device)
    path = conv_node.expr.name if isinstance(conv_node.expr, GetAttr) else "conv"
    name = _new_attr(owner, path.replace(".", "_") + "_fused", fused)
    node = _getattr_before(graph, conv_expr, name, fused)
    conv_expr.inputs[0] = node
    conv_node.users.remove(conv_expr)
    node.users.append(conv_expr)
    _drop_dead_getattr(graph, conv_node)


def _fold_into_function(graph, owner, conv_expr, stats, eps):
    from ..utils.bn_fusion import fold_weight_bias

    conv_args = conv_expr.named_args
    w_node, b_node = conv_args.get("weight"), conv_args.get("bias")
    weight, bias = _value_of(owner, w_node), _value_of(owner, b_node)
    if weight is None or weight is False or bias is False:
        return False
    gamma, beta, mean, var = stats
    weight, bias = fold_weight_bias(weight, bias, gamma, beta, mean, var, eps)
    base = w_node.expr.name.replace(".", "_")
    w_name = _new_attr(owner, base + "_fused", Parameter(weight.numpy(), device=weight.device))
    b_name = _new_attr(owner, base + "_fused_bias", Parameter(bias.numpy(), device=bias.device))
    new_w = _getattr_before(graph, conv_expr, w_name, getattr(owner, w_name))
    new_b = _getattr_before(graph, conv_expr, b_name, getattr(owner, b_name))
    conv_expr.set_arg("weight", new_w)
    conv_expr.set_arg("bias", new_b)
    for n in (w_node, b_node):
        if n is not None:
            _drop_dead_getattr(graph, n)
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
