"""`Elemwise`: one element-wise operator, chosen by upstream's mode name, as a layer."""
from .. import functional as F
from .module import Module

__all__ = ["Elemwise"]


def _switch_gt0(x, y):
    return F.where(x > 0, y, F.zeros_like(y))


def _cond_leq_mov(a, b, c):
    return F.where(a <= b, c, F.zeros_like(c))


# Upstream's Elemwise.Mode names (case-insensitive) -> what they compute, written with our
# differentiable functionals; the fused modes are their unfused compositions.
_MODES = {
    # unary
    "relu": F.relu, "abs": F.abs, "negate": F.neg, "neg": F.neg, "exp": F.exp, "log": F.log,
    "log1p": F.log1p, "expm1": F.expm1, "sin": F.sin, "cos": F.cos, "tan": F.tan,
    "asin": F.asin, "acos": F.acos, "tanh": F.tanh, "fast_tanh": F.tanh, "sigmoid": F.sigmoid,
    "floor": F.floor, "ceil": F.ceil, "round": F.round, "sqrt": F.sqrt, "square": F.square,
    "h_swish": F.hswish, "silu": F.silu, "gelu": F.gelu, "not": F.logical_not,
    # binary
    "add": F.add, "sub": F.sub, "mul": F.mul, "true_div": F.div, "floor_div": F.floor_div,
    "mod": F.mod, "max": F.maximum, "min": F.minimum, "pow": F.pow, "atan2": F.atan2,
    "lt": F.less, "leq": F.less_equal, "eq": F.equal, "neq": F.not_equal,
    "log_sum_exp": F.logaddexp, "and": F.logical_and, "or": F.logical_or,
    "xor": F.logical_xor, "shl": F.left_shift, "shr": F.right_shift,
    "fuse_add_relu": lambda x, y: F.relu(x + y),
    "fuse_add_sigmoid": lambda x, y: F.sigmoid(x + y),
    "fuse_add_tanh": lambda x, y: F.tanh(x + y),
    "fuse_add_h_swish": lambda x, y: F.hswish(x + y),
    "switch_gt0": _switch_gt0,
    # ternary and more
    "fuse_mul_add3": lambda a, b, c: a * b + c,
    "fuse_mul_add4": lambda a, b, c, d: a * b + c * d,
    "cond_leq_mov": _cond_leq_mov,
}


class Elemwise(Module):
    """``Elemwise(method)(*inps)`` applies the element-wise operator upstream calls
    ``method`` (e.g. "add", "FUSE_ADD_RELU", "fuse_mul_add3": ``a * b + c``)."""

    def __init__(self, method: str, **kwargs):
        super().__init__(**kwargs)
        key = str(method).lower()
        if key not in _MODES:
            raise ValueError(f"Elemwise: unknown method {method!r}; known: "
                             f"{', '.join(sorted(_MODES))}")
        self.method = method  # only the name is kept, so the module pickles

    def forward(self, *inps):
        return _MODES[str(self.method).lower()](*inps)

    def _module_info_string(self) -> str:
        return f"method={self.method!r}"
