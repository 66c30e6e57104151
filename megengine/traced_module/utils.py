"""Helpers: argument normalisation (calls by keyword and by position map to one argument
structure) and dotted attribute lookup."""
import inspect

__all__ = ["_convert_kwargs_to_args", "get_subattr"]


def get_subattr(module, name: str):
    """The attribute at dotted ``name`` under ``module`` (``""``: the module itself)."""
    if name == "":
        return module
    for part in name.split("."):
        module = module[int(part)] if isinstance(module, (list, tuple)) else (
            module[part] if isinstance(module, dict) else getattr(module, part))
    return module


def _convert_kwargs_to_args(func, args, kwargs, is_bounded=False):
    """(positional args, keyword-only kwargs) of a call of ``func`` (a function or its
    ``inspect.getfullargspec``): keyword arguments of positional parameters move into
    ``args``, missing defaults are filled in, keyword-only defaults join ``kwargs``.
    ``is_bounded``: ``func``'s first parameter is ``self`` and is not in ``args``.
    Extra positional arguments stay (a graph may have gained inputs)."""
    spec = func if isinstance(func, inspect.FullArgSpec) else inspect.getfullargspec(func)
    params = list(spec.args[1:] if is_bounded else spec.args)
    defaults = tuple(spec.defaults or ())
    n_required = len(params) - len(defaults)
    kwargs = dict(kwargs)
    new_args = list(args)
    for i in range(len(args), len(params)):
        p = params[i]
        if p in kwargs:
            new_args.append(kwargs.pop(p))
        elif i >= n_required:
            new_args.append(defaults[i - n_required])
        else:
            raise TypeError(f"missing required argument {p!r} (the parameters are {params})")
    for p in params[:len(args)]:
        if p in kwargs:
            raise TypeError(f"got multiple values for argument {p!r}")
    new_kwargs = {}
    kw_defaults = spec.kwonlydefaults or {}
    for p in spec.kwonlyargs:
        if p in kwargs:
            new_kwargs[p] = kwargs.pop(p)
        elif p in kw_defaults:
            new_kwargs[p] = kw_defaults[p]
        else:
            raise TypeError(f"missing required keyword-only argument {p!r}")
    if kwargs and spec.varkw is None:
        raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
    new_kwargs.update(kwargs)
    return tuple(new_args), new_kwargs
