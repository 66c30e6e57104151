"""`Elemwise`: one element-wise operator, chosen by upstream's mode name, as a layer."""
from ..functional import elemwise as _elemwise
from .module import Module

__all__ = ["Elemwise"]

# names this layer accepted before it shared functional's mode table; upstream spells them so
_ALIASES = {"NEG": "NEGATE"}


def _mode(method):
    name = str(method).upper()
    return _ALIASES.get(name, name)


class Elemwise(Module):
    """``Elemwise(method)(*inps)`` applies the element-wise operator upstream calls
    ``method`` (e.g. "add", "FUSE_ADD_RELU", "fuse_mul_add3": ``a * b + c``, "erfinv"); the
    modes are those of ``F.elemwise.Elemwise``, case-insensitive."""

    def __init__(self, method: str, **kwargs):
        super().__init__(**kwargs)
        if _mode(method) not in _elemwise._MODES:
            raise ValueError(f"Elemwise: unknown method {method!r}; known: "
                             f"{', '.join(sorted(m.lower() for m in _elemwise._MODES))}")
        self.method = method  # only the name is kept, so the module pickles

    def forward(self, *inps):
        return _elemwise._elwise(*inps, mode=_mode(self.method))
