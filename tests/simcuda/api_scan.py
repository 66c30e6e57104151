"""Find, by reading the AST, every CuPy, array-module (``xp``) and torch CUDA/distributed name the project's code uses, with each call's argument shape.

`scan` walks Python files and returns `Use` records: where (file, line), what (``cupy``, ``xp``
or ``torch`` and the dotted name below that root, e.g. ``cuda.runtime.setDevice``), and for a
call the number of positional arguments and the keyword names. `tests/simcuda/api_check.py`
checks the records against the installed CuPy and torch, and against the simulated CuPy.

What counts as a root (a name whose attributes are CuPy's or torch's):

* CuPy: a name bound by ``import cupy [as x]`` / ``import cupyx`` / ``from cupy[.sub] import y``,
  by ``x = _cupy()`` (any callee named ``_cupy``, e.g. ``device._cupy()``), a parameter named
  ``cupy`` or ``cp``, and the call ``_cupy()`` itself.
* The array module (numpy on a CPU, CuPy on a GPU): names ``xp``/``_xp`` wherever they are
  bound (a parameter, ``dev, xp = _place(device)``), and the calls
  ``xp_of(..)``, ``get_array_module(..)``, ``array_module_on(..)``. On a GPU these are CuPy, so
  every attribute must exist in CuPy too.
* torch: ``torch.cuda``, ``torch.distributed``, ``torch.backends.cuda``/``cudnn`` and
  ``torch._C._cuda_*``/``_nccl*`` (also through ``import torch.distributed as dist``), and the
  string literal in ``getattr(torch._C, "_cuda_...")``.

Names are resolved per file (not per scope): the project names its module variables
consistently, and a stray hit is visible in the checker's output with its file and line.
"""
import ast
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Use", "scan", "scan_file"]

_CUPY_PARAMS = {"cupy", "cp"}
_XP_NAMES = {"xp", "_xp"}
_XP_CALLS = {"xp_of", "get_array_module", "array_module_on"}
# module globals holding ``torch.cuda`` (megengine/device.py's pool statistics)
_TORCH_CUDA_GLOBALS = {"_torch_pool"}
_TORCH_SUBTREES = ("cuda", "distributed", "backends.cuda", "backends.cudnn")


def _is_torch_cuda(name):
    """Whether ``torch.<name>`` is in the part of torch this check covers (not, say, a
    ``from torch.utils.tensorboard import SummaryWriter`` of an optional tool)."""
    return name.startswith(_TORCH_SUBTREES + ("_C._cuda", "_C._nccl"))


@dataclass(frozen=True)
class Use:
    """One use of a name: ``root`` is "cupy", "xp" or "torch"; ``name`` the dotted path below it
    (``cupyx.scatter_add`` is root "cupy", name "cupyx.scatter_add": cupyx is its own module);
    ``call`` is None for a plain attribute, else (positional count, keyword names, whether
    ``*args``/``**kwargs`` were passed)."""

    path: str
    line: int
    root: str
    name: str
    call: tuple = None
    source: str = field(default="", compare=False)

    @property
    def where(self):
        return f"{self.path}:{self.line}"


def _dotted(node, calls=None):
    """``a.b(x).c`` -> ["a", "b()", "c"]: a chain of attributes and calls ending in a Name (or
    in a call of a plain name, kept as the ast.Call), else None. ``calls``, when given, gets
    (index in the result, ast.Call) of each call inside the chain."""
    parts, inner = [], []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            inner.append((len(parts), node))
            parts.append(node.func.attr + "()")
            node = node.func.value
        else:
            break
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        parts.append(node)  # the chain starts at a call: the caller decides whether it is a root
    else:
        return None
    if calls is not None:
        calls.extend((len(parts) - 1 - i, call) for i, call in inner)
    return parts[::-1]


def _callee_name(call):
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _call_shape(call):
    star = any(isinstance(a, ast.Starred) for a in call.args) or \
        any(k.arg is None for k in call.keywords)
    return (sum(not isinstance(a, ast.Starred) for a in call.args),
            tuple(sorted(k.arg for k in call.keywords if k.arg)), star)


class _Scanner(ast.NodeVisitor):
    """Per file: module-level roots from imports; per function: its parameters and local
    assignments (``pool = cupy.get_default_memory_pool()`` makes ``pool`` a root of
    "get_default_memory_pool()"; ``cupy = FakeCupy()`` in a test unbinds ``cupy``)."""

    def __init__(self, path, lines):
        self.path, self.lines = path, lines
        self.scopes = [{}]  # name -> (root, prefix) or None (bound to something else)
        self.uses = []

    # -- bindings --
    def _bind(self, name, value):
        self.scopes[-1][name] = value

    def _lookup(self, name):
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def visit_Import(self, node):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] not in ("cupy", "cupyx", "torch"):
                continue
            if alias.asname is None:  # "import cupy.cuda" binds "cupy"
                self._bind(parts[0], self._module_root(parts[:1]))
            else:
                self._bind(alias.asname, self._module_root(parts))

    def visit_ImportFrom(self, node):
        if not node.module or node.level:
            return
        parts = node.module.split(".")
        if parts[0] in ("cupy", "cupyx", "torch"):
            for alias in node.names:
                self._bind(alias.asname or alias.name, self._module_root(parts + [alias.name]))

    @staticmethod
    def _module_root(parts):
        if parts[0] == "torch":
            return "torch", ".".join(parts[1:])
        if parts[0] == "cupyx":
            return "cupy", ".".join(parts)
        return "cupy", ".".join(parts[1:])

    def _function(self, node):
        scope = {}
        args = node.args
        for arg in args.posonlyargs + args.args + args.kwonlyargs:
            if arg.arg in _CUPY_PARAMS:
                scope[arg.arg] = ("cupy", "")
            elif arg.arg == "torch_module":
                scope[arg.arg] = ("torch", "")
            elif arg.arg == "torch_cuda":
                scope[arg.arg] = ("torch", "cuda")
            else:
                scope[arg.arg] = None  # a parameter shadows a module-level root
        self.scopes.append(scope)
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Assign(self, node):
        self.visit(node.value)  # uses on the right-hand side belong to the old bindings
        value = self._value_root(node.value)
        for target in node.targets:
            for name in ([target] if isinstance(target, ast.Name) else
                         [t for t in getattr(target, "elts", []) if isinstance(t, ast.Name)]):
                self._bind(name.id, value if isinstance(target, ast.Name) else None)
            if not isinstance(target, ast.Name):
                self.visit(target)

    def _value_root(self, value):
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and \
                value.func.id == "getattr" and len(value.args) >= 2 and \
                isinstance(value.args[1], ast.Constant) and isinstance(value.args[1].value, str):
            chain = _dotted(value.args[0])  # helper = getattr(c10d, "_new_process_group_helper")
            root = self._root(chain) if chain else None
            if root is not None:
                return root[0], ".".join(p for p in (root[1], value.args[1].value) if p)
            return None
        if isinstance(value, ast.IfExp):  # torch_module = torch if torch_module is None else ..
            return self._value_root(value.body) or self._value_root(value.orelse)
        if isinstance(value, ast.Name):
            return self._lookup(value.id)
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            if value.func.id == "_cupy":
                return "cupy", ""
            if value.func.id in _XP_CALLS:
                return "xp", ""
        if isinstance(value, ast.Call) and _callee_name(value) == "_cupy":
            return "cupy", ""
        chain = _dotted(value.func if isinstance(value, ast.Call) else value) \
            if isinstance(value, (ast.Attribute, ast.Call)) else None
        root = self._root(chain) if chain else None
        if root is None:
            return None
        r, prefix = root
        return r, prefix + ("()" if isinstance(value, ast.Call) else "")

    def visit_With(self, node):
        # inside ``with pytest.raises(...)`` a test makes a call that must fail: not a use
        if any(isinstance(item.context_expr, ast.Call) and
               _callee_name(item.context_expr) == "raises" for item in node.items):
            return
        self.generic_visit(node)

    # -- uses --
    def visit_Attribute(self, node):
        self._record(node)
        self._visit_inside(node)

    def _visit_inside(self, node):
        # the calls inside a chain (their arguments may use roots too), not the chain again
        while isinstance(node, (ast.Attribute, ast.Call)):
            if isinstance(node, ast.Call):
                for a in node.args + [k.value for k in node.keywords]:
                    self.visit(a)
                node = node.func
            else:
                node = node.value
        self.visit(node)

    def visit_Call(self, node):
        # getattr(torch._C, "_cuda_x", ...) and hasattr(...): the literal name is a use
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and \
                len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and \
                isinstance(node.args[1].value, str):
            chain = _dotted(node.args[0])
            root = self._root(chain) if chain else None
            if root is not None:
                r, prefix = root
                name = ".".join(p for p in (prefix, node.args[1].value) if p)
                if r != "torch" or _is_torch_cuda(name):
                    self._add(node, r, name, None, optional=node.func.id == "hasattr"
                              or len(node.args) > 2)
        if isinstance(node.func, ast.Name) and node.func.id not in _XP_NAMES:
            bound = self._lookup(node.func.id)  # helper(...) where helper = getattr(c10d, ...)
            if bound is not None and bound[1] and (bound[0] == "cupy" or bound[0] == "torch" and
                                                   _is_torch_cuda(bound[1])):
                self._add(node, bound[0], bound[1], _call_shape(node))
        if isinstance(node.func, ast.Attribute):
            self._record(node.func, node)
            for a in node.args + [k.value for k in node.keywords]:
                self.visit(a)
            self._visit_inside(node.func)
        else:
            self.generic_visit(node)

    def _root(self, chain):
        head, rest = chain[0], list(chain[1:])
        if isinstance(head, ast.Call):
            callee = _callee_name(head)
            if callee == "_cupy":
                return "cupy", ".".join(rest)
            if callee in _XP_CALLS:
                return "xp", ".".join(rest)
            return None
        if head in _TORCH_CUDA_GLOBALS:  # None until set: the module-level binding says nothing
            return "torch", ".".join(["cuda"] + rest)
        if head in _XP_NAMES:  # a parameter, xp_of(..), `dev, xp = _place(..)`: the array module
            return "xp", ".".join(rest)
        bound = self._lookup(head)
        if bound is None:
            return None
        r, prefix = bound
        below = ".".join(p for p in [prefix] + rest if p)
        if r == "torch" and not (_is_torch_cuda(below) or below in ("_C", "backends", "")):
            return None
        return r, below

    def _record(self, node, call=None):
        inner = []
        chain = _dotted(node, inner)
        if chain is None:
            return
        root = self._root(chain)
        if root is None:
            return
        r, name = root
        if not name or (r == "torch" and name in ("_C", "backends")):
            return
        # each call inside the chain is a use of its own: cupy.cuda.Device(i).use() checks
        # Device(i) against Device's signature and .use() against Device's attributes
        for index, inner_call in sorted(inner, key=lambda item: item[0]):
            r_inner, inner_name = self._root(chain[:index + 1])
            self._add(inner_call, r_inner, inner_name[:-2], _call_shape(inner_call))
        self._add(node, r, name, None if call is None else _call_shape(call))

    def _add(self, node, root, name, call, optional=False):
        line = self.lines[node.lineno - 1].strip() if node.lineno <= len(self.lines) else ""
        self.uses.append(Use(self.path, node.lineno, root, name, call,
                             source=("(optional) " if optional else "") + line))


def scan_file(path, relative_to=None):
    """The uses in one Python file (a file that does not parse yields none)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError:
        return []
    shown = str(path.relative_to(relative_to)) if relative_to else str(path)
    scanner = _Scanner(shown, text.splitlines())
    scanner.visit(tree)
    return scanner.uses


def scan(paths, relative_to=None, exclude=()):
    """The uses in every ``.py`` file under ``paths`` (files or directories), in file order;
    ``exclude``: path fragments to skip (the simulated CuPy itself is not a user of CuPy)."""
    uses = []
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for f in files:
            if any(part in str(f) for part in exclude):
                continue
            uses.extend(scan_file(f, relative_to))
    return uses
