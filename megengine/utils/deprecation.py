"""Deprecation markers as upstream's: `deprecated` (a decorator: a warning per call and a
``.. deprecated::`` note in the docstring), `deprecated_func` (an old name for a function moved
elsewhere) and `deprecated_kwargs_default` (a default about to change)."""
import functools
import importlib
import inspect
import textwrap
import warnings

__all__ = ["deprecated", "deprecated_func", "deprecated_kwargs_default"]


def _note(doc, version, reason):
    """``doc`` with a Sphinx ``.. deprecated::`` directive appended (as deprecated.sphinx)."""
    doc = inspect.cleandoc(doc) if doc else ""
    body = f".. deprecated:: {version}"
    if reason:
        body += "\n" + textwrap.indent(reason, "   ")
    return (doc + "\n\n" + body + "\n") if doc else body + "\n"


def _kind(wrapper, name, args):
    """How the deprecated package words a call of ``wrapper``: "method" when it is a method of
    its first argument's class, "class method" when a classmethod of its first argument (a
    class), else "function (or staticmethod)"."""
    if args:
        first = args[0]
        owner = first if inspect.isclass(first) else type(first)
        found = inspect.getattr_static(owner, name, None)  # (no property or __getattr__ runs)
        if found is wrapper:
            return "method"
        if isinstance(found, classmethod) and found.__func__ is wrapper:
            return "class method"
    return "function (or staticmethod)"


def deprecated(reason=None, version=None, action=None, category=DeprecationWarning, **kwargs):
    """``@deprecated(version="1.2", reason="use g instead")`` on a function, method or class: each
    call (each instantiation) warns ``category`` with "Call to deprecated function (or
    staticmethod) f. (use g instead) -- Deprecated since version 1.2." ("method", "class
    method" or "class" in place of "function (or staticmethod)" for those), and the docstring
    gets a ``.. deprecated::`` note, as the ``deprecated`` package's Sphinx decorator that
    upstream uses. (Earlier versions of this fork said "function (or staticmethod)" for
    methods and class methods too.)

    ``action``: a ``warnings`` filter action applied to these warnings only ("error",
    "ignore", "always", ...). ``line_length`` and other options of that package are accepted
    (they only format its docstring note)."""
    if callable(reason) and version is None:  # bare @deprecated (the package allows it too)
        return deprecated()(reason)
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"deprecated: reason must be a string, got {type(reason).__name__}")

    def decorate(obj):
        name = getattr(obj, "__name__", repr(obj))
        tail = f" ({reason})" if reason else ""
        if version:
            tail += f" -- Deprecated since version {version}."

        def warn(what):
            with warnings.catch_warnings():
                if action:
                    warnings.simplefilter(action, category)
                warnings.warn(f"Call to deprecated {what} {name}.{tail}", category=category,
                              stacklevel=3)

        if inspect.isclass(obj):
            original_new = obj.__new__

            def __new__(cls, *args, **kw):
                if cls is obj:
                    warn("class")
                if original_new is object.__new__:
                    return original_new(cls)
                return original_new(cls, *args, **kw)

            obj.__new__ = staticmethod(__new__)
            obj.__doc__ = _note(obj.__doc__, version, reason)
            return obj

        @functools.wraps(obj)
        def wrapper(*args, **kw):
            warn(_kind(wrapper, name, args))
            return obj(*args, **kw)

        wrapper.__doc__ = _note(obj.__doc__, version, reason)
        return wrapper

    return decorate


def deprecated_func(version, origin, name, tbd):
    """The function ``origin.name`` (``origin`` a module path) under an old name: calling it
    warns once per wrapper that ``name`` moved to ``origin`` (DeprecationWarning), unless
    ``tbd`` ("to be discussed": keep the alias quiet for now)."""
    func = getattr(importlib.import_module(origin), name)
    should_warn = not tbd

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if should_warn:
            warnings.warn(f"Call to deprecated function {name}. (use {origin}.{name} instead) "
                          f"-- Deprecated since version {version}.",
                          category=DeprecationWarning, stacklevel=2)
        return func(*args, **kwargs)

    return wrapper


def deprecated_kwargs_default(version, kwargs_name, kwargs_pos):
    """Decorator: warn (PendingDeprecationWarning) when ``kwargs_name``, the parameter at
    1-based position ``kwargs_pos``, is left to its default, whose meaning changes in
    ``version``: callers should pass it by keyword."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            if len(args) < kwargs_pos and kwargs_name not in kwargs:
                warnings.warn(f"the default behavior for {kwargs_name} will be changed in "
                              f"version {version}, please use it in keyword parameter way",
                              category=PendingDeprecationWarning, stacklevel=2)
            return func(*args, **kwargs)

        return wrapper

    return decorate
