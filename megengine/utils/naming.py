"""Upstream's `AutoNaming`: the stack of name scopes that code generated for tracing pushes and pops.

Upstream names the operators of a traced graph by these scopes ("root.layer1.0.conv1"), so that
``trace.dump(..., keep_opr_name=True)`` writes readable operator names; MegEngine/torch2mge's
generated programs wrap every call in ``AutoNaming.push_scope(...)`` / ``pop_scope()``. The
programs written by this fork's ``trace.dump`` keep no operator names (``keep_opr_name`` is
accepted without effect there), so here the scopes are kept, nested and checked, and nothing
else reads them. Upstream has had both a class-level form (``AutoNaming.push_scope(s)``, the
one torch2mge's code calls) and, later, a module-level instance (``auto_naming``); the class
methods serve both spellings.
"""

__all__ = ["AutoNaming", "auto_naming"]


class AutoNaming:
    """Name scopes and user-given tensor names, shared by the whole process."""

    scopes = []  # the open scopes, outermost first; None: a scope that adds no name
    handle2names = {}  # a tensor's id -> the name its user gave it

    @classmethod
    def clear(cls):
        """Forget every open scope and recorded name (upstream calls it when a trace starts)."""
        cls.scopes.clear()
        cls.handle2names.clear()

    @classmethod
    def push_scope(cls, scope):
        """Open scope ``scope`` (a str; None opens one that adds nothing to names)."""
        if scope is not None and not isinstance(scope, str):
            raise TypeError(
                f"AutoNaming.push_scope: a scope is a str (or None), got {type(scope).__name__}"
            )
        cls.scopes.append(scope)

    @classmethod
    def pop_scope(cls):
        """Close the innermost open scope; returns it."""
        if not cls.scopes:
            raise RuntimeError(
                "AutoNaming.pop_scope: no scope is open; every pop_scope() must follow a "
                "push_scope()"
            )
        return cls.scopes.pop()

    @classmethod
    def get_scope(cls):
        """The open scopes joined by dots ("root.layer1"); "" when none is open."""
        return ".".join(s for s in cls.scopes if s is not None)

    @classmethod
    def gen_name(cls, x) -> str:
        """``x``'s name (its ``name``, else ``_name``) under the open scopes."""
        name = getattr(x, "name", None) or getattr(x, "_name", None) or ""
        scope = cls.get_scope()
        return f"{scope}.{name}" if scope else name

    @classmethod
    def record_var_name(cls, handle, name):
        """Remember that the tensor ``handle`` (an id) was named ``name`` by its user."""
        cls.handle2names[handle] = name

    @classmethod
    def get_var_name(cls, handle):
        """The name recorded for ``handle`` (then forgotten), or None."""
        return cls.handle2names.pop(handle, None)


auto_naming = AutoNaming()  # upstream's later spelling: the same shared state
