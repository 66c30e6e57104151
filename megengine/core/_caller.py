"""For an error raised deep in the engine, the names of the public function called and its argument.

A string or None given for a tensor is refused where the engine converts it (`Tensor`'s
constructor, an operator's operand), many calls below the function the user called
(``F.conv2d(x, "w")``), where the error could only say what was wrong, not where. Passing each
function's and argument's name down to those places would cost every call that succeeds; these
helpers instead read the names off the stack, and run only when the error is raised.
"""
import inspect
import os
import sys

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _runs(f, frame):
    """Whether function ``f`` is what ``frame`` runs: its code, and for a function an op factory
    made (``F.add``, ``F.exp``: one code, a closure each) the same closure."""
    code = frame.f_code
    if getattr(f, "__code__", None) is not code:
        return False
    if not code.co_freevars:
        return True
    local = frame.f_locals  # (free variables included)
    for name, cell in zip(code.co_freevars, f.__closure__ or ()):
        try:
            if local.get(name, cell) is not cell.cell_contents:
                return False
        except ValueError:  # (an empty cell)
            return False
    return True


def _public_function(frame):
    """(name, function) of the public function of megengine's API that ``frame`` runs, by the
    name its module gives it (a factory's ``fn`` is ``add`` there), or None. Public: a name
    without ``_`` in a module outside the engine's core (whose functions, ``apply`` and the
    like, serve operators and methods) that is not private. (Not its module's ``__all__``:
    ``F.complex`` is listed in ``functional.tensor``'s, defined in ``functional.elemwise``.)"""
    module = frame.f_globals.get("__name__", "")
    if not module.startswith("megengine.") or module.startswith("megengine.core") \
            or any(part.startswith("_") for part in module.split(".")):
        return None
    found = [(name, f) for name, f in list(frame.f_globals.items())
             if not name.startswith("_") and _runs(f, frame)]
    # (of a module's aliases of one function, the name it was defined with)
    own = [(name, f) for name, f in found if name == f.__name__]
    return (own or found or [None])[0]


def _entry(frame):
    """(frame, name, function) of the outermost public megengine function among the frames from
    ``frame`` out to the first one outside the package (the user's code), or None."""
    entry = None
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        found = _public_function(frame)
        if found is not None:
            entry = (frame, *found)
        frame = frame.f_back
    return entry


def _argument(frame, f, value):
    """The name of the parameter of ``f`` (running in ``frame``) that holds ``value``, with the
    index where a list or tuple argument holds it (``inps[1]``); None where no parameter or
    several do. A parameter whose default is None does not count for None (None is allowed
    there: the None that failed came from elsewhere)."""
    try:
        params = inspect.signature(f).parameters
    except (TypeError, ValueError):
        return None
    local = frame.f_locals
    found = []
    for name, p in params.items():
        if name not in local or (value is None and p.default is None):
            continue
        held = local[name]
        if held is value:
            found.append(name)
        elif type(held) in (list, tuple):
            found += [f"{name}[{i}]" for i, v in enumerate(held) if v is value]
    return found[0] if len(found) == 1 else None


def public_function():
    """The name of the public megengine function that the user's code called and that is
    running now (the outermost one: ``F.normalize``, not the ``F.norm`` it calls), or None
    (the user's code called a method, such as an operator of Tensor)."""
    entry = _entry(sys._getframe(1))
    return entry[1] if entry else None


def public_argument(value):
    """(function, argument): the names of the public megengine function running now (see
    `public_function`) and of its argument that holds ``value`` (see `_argument`); either is
    None where not found."""
    entry = _entry(sys._getframe(1))
    if entry is None:
        return None, None
    frame, name, f = entry
    return name, _argument(frame, f, value)


def argument_prefix(value):
    """``"conv2d: weight: "``, ``"conv2d: "`` or ``""``: the words that start an error about
    ``value``, naming what `public_argument` finds."""
    name, arg = public_argument(value)  # (from its frame too: the walk starts inside the package)
    if name is None:
        return ""
    return f"{name}: {arg}: " if arg else f"{name}: "
