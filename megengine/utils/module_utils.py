"""Helpers over a Module tree: read or replace the object at a dotted ``named_*`` key, switch a
tree's train/eval mode for the span of a ``with`` block, and find the PyTorchModules in it."""
import contextlib
import sys

from ..module.module import Module, _access_structure

__all__ = ["get_expand_structure", "set_expand_structure", "set_module_mode_safe"]


def get_expand_structure(obj: Module, key: str):
    """The object at ``key`` as :meth:`~.Module.named_modules` / ``named_parameters`` spell
    it (``"a.1.x"``: attribute ``a``, its item 1, that item's ``"x"``), looking through lists,
    tuples and dicts as well as attributes."""
    return _access_structure(obj, key)


def set_expand_structure(obj: Module, key: str, value):
    """Replace the object at the dotted ``key`` (see :func:`get_expand_structure`) with ``value``:
    an attribute of a Module (a Sequential's layer too), an item of a list or dict."""

    def put(parent, last, _old):
        if isinstance(parent, Module):
            setattr(parent, str(last), value)
        elif isinstance(parent, (list, dict)):
            parent[last] = value
        else:
            raise TypeError(
                f"set_expand_structure: cannot replace {key!r}: it sits in a "
                f"{type(parent).__name__}, which cannot be changed in place (use a list)"
            )

    _access_structure(obj, key, callback=put)


@contextlib.contextmanager
def set_module_mode_safe(module: Module, training: bool = False):
    """Within the block every module of ``module``'s tree has ``training`` set to the given
    mode; on leaving (also by an exception) each gets back the mode it had."""
    saved = [(m, m.training) for m in module.modules()]
    # A PyTorchModule's train() sets its whole torch module, whose submodules may have had modes
    # of their own (a frozen BatchNorm in eval inside a training backbone): torch's are put back
    # one by one too, else the block would leave every torch layer in the block's mode.
    saved_torch = [(t, t.training) for _, wrapper in pytorch_modules(module)
                   for t in wrapper.torch_module.modules()]
    for m, _ in saved:
        m.train(training, recursive=False)
    try:
        yield module
    finally:
        for m, mode in saved:
            m.training = mode
        for t, mode in saved_torch:
            t.training = mode


def pytorch_modules(module: Module):
    """``(name, wrapper)`` for every `~megengine.module.pytorch.PyTorchModule` in ``module``'s
    tree (``named_modules`` order), without importing torch: a tree can hold one only once
    ``megengine.module.pytorch`` has been imported."""
    pytorch = sys.modules.get("megengine.module.pytorch")
    if pytorch is None:
        return []
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, pytorch.PyTorchModule)]
