"""Upstream's `AutoNaming`: the module scopes a traced function runs in, from which `trace.dump`
names the operators and values of the program it writes (``simple.linear.ADD``,
``simple.RELU[1]``), as upstream MegEngine's dumped graphs are named.

A Module call made while a trace records pushes its scope (the module's own ``name`` when it
has one, else the attribute path under its parent, ``l0.1``; a top module without a name adds
nothing) and pops it when the call returns. The recorder notes the scope of each op it records
(see `megengine.jit.record`); `megengine.jit.dump` joins scope and the op's upstream type name
and numbers names that repeat (`remove_duplicate_names`).
"""

__all__ = ["AutoNaming", "auto_naming"]


class AutoNaming:
    """The naming state of the trace being recorded (class-level, as upstream's: one trace
    records at a time). ``clear()`` forgets it, for a fresh start after an exception left
    scopes open."""

    scopes = []
    c_ops = []
    name2ops = {}
    handle2names = {}
    __cls_attributes__ = {"scopes", "c_ops", "name2ops", "handle2names"}

    @classmethod
    def clear(cls):
        for attr in cls.__cls_attributes__:
            getattr(cls, attr).clear()

    @classmethod
    def push_scope(cls, scope):
        """Enter a module's scope (None: a module without a name, which adds nothing)."""
        if scope is not None and not isinstance(scope, str):
            raise TypeError(f"AutoNaming.push_scope: a scope is a module name (str) or None, "
                            f"got {type(scope).__name__}")
        cls.scopes.append(scope)

    @classmethod
    def pop_scope(cls):
        if not cls.scopes:
            raise RuntimeError("AutoNaming.pop_scope: no scope is open (a push_scope/pop_scope "
                               "pair was broken; AutoNaming.clear() resets)")
        return cls.scopes.pop()

    @classmethod
    def get_scope(cls):
        """The dotted scope of the running module call ("" outside any named module)."""
        return ".".join(s for s in cls.scopes if s is not None)

    @classmethod
    def gen_name(cls, x) -> str:
        """``x``'s name in the current scope: its own name (``c_name``, else ``_name``) after
        the scope."""
        scope = cls.get_scope()
        name = getattr(x, "c_name", None) or getattr(x, "_name", None)
        if not name:
            raise ValueError(f"AutoNaming.gen_name: {x!r} has no name to scope")
        return scope + "." + name if scope else name

    @classmethod
    def record_var_name(cls, handle, name):
        cls.handle2names[handle] = name

    @classmethod
    def get_var_name(cls, handle):
        return cls.handle2names.pop(handle, None)

    @classmethod
    def record_opnode(cls, op):
        """Note operator ``op`` (anything with ``name`` and ``outputs``) under its name, for
        `remove_duplicate_names`."""
        ops = cls.name2ops.setdefault(op.name, [])
        if all(o is not op for o in ops):
            ops.append(op)

    @classmethod
    def remove_duplicate_names(cls):
        """Number the operators recorded under one name in the order they were recorded:
        ``RELU`` twice becomes ``RELU[0]`` and ``RELU[1]`` (a name used once stays as it is);
        the output vars of a multi-output operator follow (``TopK:0`` -> ``TopK[1]:0``)."""
        for key, ops in cls.name2ops.items():
            if len(ops) == 1:
                continue
            for i, op in enumerate(ops):
                op.name = f"{key}[{i}]"
                if len(op.outputs) == 1:
                    continue
                for var in op.outputs:
                    if var.name is not None:
                        var.name = var.name.replace(key, op.name, 1)
        cls.name2ops.clear()


# upstream's later spelling (MegEngine/torch2mge's generated code uses the class): one shared state
auto_naming = AutoNaming()

# --------------------------------------------------------------------------------------------
# the names `trace.dump` writes
# --------------------------------------------------------------------------------------------
class _NamedOpr:
    """An operator of a program being named (what `remove_duplicate_names` renames)."""

    __slots__ = ("name", "outputs")

    def __init__(self, name, outputs):
        self.name, self.outputs = name, outputs


class _NamedVar:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


# ops whose operands upstream's graph orders by var id (older value first): the order a dumped
# graph shows, whichever side of ``k * x`` the Python expression put a value on
COMMUTATIVE = frozenset({"Add", "Mul", "Maximum", "Minimum", "And", "Or", "Xor", "Equal",
                         "NotEqual"})


def default_opr_name(op, in_shapes=(), dyn_names=()):
    """An op's name without a scope, as upstream names its operators: the Elemwise mode
    (``ADD``, ``RELU``) or the operator type (``MatrixMul``, ``TypeCvt``, ``Convolution``); the
    engine op's class name where upstream has no such operator."""
    from .network_node import Elemwise, classify

    cls, params = classify(op, in_shapes, dyn_names)
    return params["mode"] if cls is Elemwise else (cls.type or type(op).__name__)


def program_names(steps, scopes, user_names):
    """Upstream's names of the op steps of a recorded program: ``[(operator name, [output var
    names])]`` per step of ``steps`` (objects with ``template``, ``metas``, ``dyn`` and
    ``outs``). ``scopes``: {output slot: module scope} noted while recording; ``user_names``:
    {slot: name the user gave the value}. An operator is ``<scope>.<type name>``, numbered when
    the name repeats (``simple.RELU[0]``, ``simple.RELU[1]``); an output var takes the user's
    name, else its operator's (``<operator>:<i>`` for operators with several outputs)."""
    oprs = []
    for step in steps:
        shapes = [m[0] for m in step.metas] if step.metas else ()
        base = default_opr_name(step.template, shapes, [k for k, _ in step.dyn or ()])
        scope = next((scopes[s] for s in step.outs if s in scopes), "")
        name = f"{scope}.{base}" if scope else base
        outs = [_NamedVar(None if len(step.outs) == 1 else f"{name}:{i}")
                for i in range(len(step.outs))]
        oprs.append(_NamedOpr(name, outs))
    saved = dict(AutoNaming.name2ops)  # (a dump made while a trace records keeps its state)
    AutoNaming.name2ops.clear()
    try:
        for opr in oprs:
            AutoNaming.record_opnode(opr)
        AutoNaming.remove_duplicate_names()
    finally:
        AutoNaming.name2ops.clear()
        AutoNaming.name2ops.update(saved)
    result = []
    for step, opr in zip(steps, oprs):
        names = [user_names.get(s) or v.name or opr.name for s, v in zip(step.outs, opr.outputs)]
        result.append((opr.name, names))
    return result


def default_output_names(out_slots, prog, steps, in_names, named, fallback):
    """Default output names as upstream's: the name of each output var (its operator's name,
    the name the user gave it, or an input's name); ``fallback`` (``output_<i>``) where that
    is missing or already taken by an earlier output. ``named``: {id(op step): (operator
    name, var names)} from `program_names`."""
    by_slot = dict(zip(prog.arg_slots, in_names))
    for st in steps:
        if id(st) in named:  # an op step
            by_slot.update(zip(st.outs, named[id(st)][1]))
        elif hasattr(st, "src") and st.src in by_slot:  # an alias step (a detach)
            by_slot[st.out] = by_slot[st.src]
    names = []
    for s, default in zip(out_slots, fallback):
        name = by_slot.get(s)
        names.append(default if not name or name in names else name)
    return names
