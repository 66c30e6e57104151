"""`Module`: the base of every layer: finds its tensors and submodules, saves/loads state, hooks."""
import functools
from collections import OrderedDict
from collections.abc import Mapping
from itertools import count
from typing import Any, Callable, Iterable, Optional, Tuple

import numpy as np

from ..core import dispatch as _dispatch
from ..core.ops import ArgumentError
from ..core.tensor import Parameter, Tensor
from ..logger import get_logger
from ..utils.deprecation import deprecated

__all__ = ["Module", "HookHandler", "LoadStateDictError"]


def _naming_scopes():
    """`megengine.utils.naming.AutoNaming`'s scope stack (its push_scope/pop_scope, inline:
    a module's name is a str or None, as they check), imported on first use (a cycle)."""
    global _naming_scopes
    from ..utils.naming import AutoNaming

    def _naming_scopes():
        return AutoNaming.scopes
    return AutoNaming.scopes

# megengine's logger, as upstream's: its lines carry the date and the WRN tag
logger = get_logger(__name__)

# Attributes that layers keep from one call to the next, made at a call and never saved:
# conv and batch-norm layers' torch views of their parameters (`functional._aten.LayerViews`),
# RNN/LSTM stacks' (`functional.rnn.WeightViews`), a Sequential's call order
_CALL_CACHES = frozenset({"_layer_views", "_weight_views", "_call_order"})


def _is_parameter(obj):
    return isinstance(obj, Parameter)


def _is_buffer(obj):
    # Upstream's definition: every Tensor attribute that is not a Parameter is a buffer.
    return isinstance(obj, Tensor) and not isinstance(obj, Parameter)


def _is_tensor(obj):
    return isinstance(obj, Tensor)


def _is_module(obj):
    return isinstance(obj, Module)


def _sorted_keys(d):
    try:
        return sorted(d)
    except TypeError:  # keys of mixed types: only str keys may hold state anyway
        return list(d)


class StructureKeyError(AssertionError, TypeError):
    """A dict attribute holds Tensors or Modules under a key that is not a str.

    Upstream asserts (AssertionError); a TypeError is what the mistake is, so this is both.
    """


class _StateDictTypeError(TypeError, ValueError):
    """``load_state_dict`` got neither a dict nor a callable (upstream raises ValueError)."""


def _access_structure(obj, key: str, callback: Callable = None):
    """Follow the dotted ``key`` (as ``named_*`` gives it: attributes, list/tuple indices,
    dict keys) from ``obj`` and return ``callback(parent, last_key, leaf)``; list and tuple
    steps give ``last_key`` as an int. Without ``callback`` the leaf itself is returned."""
    parent, cur, k = None, obj, None
    for k in key.split("."):
        parent = cur
        try:
            if isinstance(cur, (list, tuple)):
                k = int(k)
                cur = cur[k]
            elif isinstance(cur, dict):
                cur = cur[k]
            else:
                cur = getattr(cur, k)
        except (KeyError, IndexError, AttributeError, ValueError) as e:
            raise type(e)(
                f"_access_structure: cannot follow {key!r}: step {k!r} is not in "
                f"{type(parent).__name__} ({e})"
            ) from None
    if callback is None:
        return cur
    return callback(parent, k, cur)


def _is_module_like(obj):
    # What upstream tracks in ``_modules`` for repr: modules and containers that may hold them.
    return isinstance(obj, (Module, list, tuple, dict))


def _is_module_or_tensor(obj):
    return isinstance(obj, (Module, Tensor))


def _warn_named_twice(first, parent, key):
    # upstream's wording, "submodule" for a Tensor too, the class as its repr prints it
    logger.warning(
        "try setting the submodule `%s` to `%s`'s new attribute `%s`, its name `%s` will "
        "remain unchanged", first, type(parent), key, first,
    )


def _tensor_take_name(tensor, parent, key):
    """Record the attribute a Tensor was first set as (a name the user gave it wins), as
    upstream's naming does; a Tensor set as another attribute later (a weight shared by two
    layers, a spectral norm's ``weight_orig``) keeps it, and the warning says so."""
    short = tensor.name or key
    first = getattr(tensor, "_short_name", None)
    if first and first != short:
        _warn_named_twice(first, parent, short)
        return
    object.__setattr__(tensor, "_short_name", short)


def _expand_structure(key, obj):
    """[(dotted key, leaf)] for the Tensors and Modules in ``obj``, looking inside lists,
    tuples and dicts (dict keys sorted, as upstream, so names and order are deterministic)."""
    if isinstance(obj, (Tensor, Module)):
        return [(key, obj)]
    if isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    elif isinstance(obj, dict):
        items = [(k, obj[k]) for k in _sorted_keys(obj)]
    else:
        return []
    out = []
    for k, v in items:
        sub = _expand_structure(str(k), v)
        if sub and not isinstance(k, str):
            raise StructureKeyError(
                f"keys for Tensor and Module must be str, error key: {k}; attribute {key!r} "
                f"holds a Tensor or Module under the {type(k).__name__} key {k!r}: use str keys"
            )
        out.extend((key + "." + sk, leaf) for sk, leaf in sub)
    return out


class HookHandler:
    """What ``register_forward_*_hook`` returns: ``remove()`` unregisters the hook."""

    _ids = count()

    def __init__(self, source_dict: "OrderedDict", hook: Callable):
        if not callable(hook):
            raise TypeError(f"a hook must be callable, got {type(hook).__name__}")
        self.id = next(HookHandler._ids)
        self._hooks = source_dict
        source_dict[self.id] = hook

    def remove(self):
        self._hooks.pop(self.id, None)


def _value_error(error, key):
    """``error`` (raised for the value of ``key``) again, its message naming the key."""
    return type(error)(f"load_state_dict: the value of {key!r} cannot be loaded: {error}; "
                       "nothing was loaded")


class LoadStateDictError(KeyError, ValueError):
    """``load_state_dict`` found missing/unexpected keys or mismatched values.

    Upstream raises KeyError for key problems and ValueError for shape problems; this error
    reports all of them at once, so it is both.
    """

    def __str__(self):  # KeyError would repr() the message, quoting it onto one line
        return str(self.args[0])


class Module:
    """Base class of layers: set Parameters, buffers (other Tensors) and submodules as
    attributes (also inside lists, tuples and dicts) and define ``forward``.

    Discovery follows upstream: attributes are scanned in sorted name order, dict keys in
    sorted order, list items by index; a tensor or module reachable twice is reported once,
    under its first name. This order is what ``parameters()`` and ``state_dict()`` give.

    As upstream, assigning a Module (or a list, tuple or dict holding Modules or Tensors)
    before ``Module.__init__`` ran is an error.
    """

    # As upstream, normalization layers save their tensors flattened to 1-d (BatchNorm keeps
    # (1, C, 1, 1) tensors for speed) and load any same-size shape; they set this to True.
    _flat_state = False

    def __init__(self, name: Optional[str] = None):
        # Assignment order of module-like attributes: what repr prints, in that order.
        self._modules = []
        if name is not None and not (isinstance(name, str) and name.strip()):  # (upstream asserts)
            raise ArgumentError(f"Module name must be a non-empty string, got {name!r}")
        self.name = name
        self.training = True
        self.quantize_disabled = False
        self._forward_pre_hooks = OrderedDict()
        self._forward_hooks = OrderedDict()
        # The dotted name under the module that first took this one as an attribute
        # (``_name``) and the last step of it (``_short_name``), as upstream records them.
        self._name = None
        self._short_name = None

    def forward(self, *inputs, **kwargs):
        # Upstream makes this abstract (no instance without forward); here a forward-less
        # Module may exist and fails only when called: a PyTorchModule's mirror of a torch
        # submodule is one (it holds that submodule's tensors and is never called).
        raise NotImplementedError(
            f"{type(self).__name__} has no forward(): define forward(self, ...) to call it"
        )

    def __setattr__(self, name, value):
        if name != "_modules":
            modules = self.__dict__.get("_modules")
            # (first: it refuses a container with a non-str key before anything changes)
            leaves = _expand_structure(name, value)
            if _is_module_like(value):
                # Catch a forgotten super().__init__() at the assignment, not at the first call.
                # Upstream refuses any list/tuple/dict here; a container without Modules or
                # Tensors (a kernel-size tuple) is harmless, so only those that hold them are.
                if modules is None and (isinstance(value, Module) or leaves):
                    raise AttributeError(
                        f"cannot assign module before Module.__init__() call: {name!r} "
                        f"(a {type(value).__name__}) was set before super().__init__(); "
                        f"call super().__init__() first in {type(self).__name__}.__init__"
                    )
                if modules is not None and name not in modules:
                    modules.append(name)
            elif modules is not None and name in modules:
                modules.remove(name)
            if "_short_name" in self.__dict__:  # __init__ has run: name the subtree
                prefix = self._name or self.name
                for key, leaf in leaves:
                    if isinstance(leaf, Module):
                        leaf._take_name(self, prefix, key)
                    else:
                        _tensor_take_name(leaf, self, key)
        object.__setattr__(self, name, value)

    def _take_name(self, parent, prefix, key):
        """Record where this module sits (upstream's automatic naming); a module already
        named under another attribute keeps its first name."""
        if self.__dict__.get("_short_name") and self._short_name != key:
            _warn_named_twice(self._short_name, parent, key)
            return
        full = key if not prefix else prefix + "." + key
        object.__setattr__(self, "_short_name", key)
        object.__setattr__(self, "_name", full)
        for sub_key, leaf in self._flatten(recursive=False, with_key=True,
                                           predicate=_is_module_or_tensor):
            if isinstance(leaf, Module):
                leaf._take_name(self, full, sub_key)
            else:
                _tensor_take_name(leaf, self, sub_key)

    def __delattr__(self, name):
        modules = self.__dict__.get("_modules")
        if modules is not None and name in modules:
            modules.remove(name)
        object.__delattr__(self, name)

    def __getstate__(self):
        # what layers keep between calls is not state: a pickle (mge.save) or a copy holds
        # none of it, so upstream's and older versions' Module classes load it
        state = self.__dict__
        if not _CALL_CACHES.isdisjoint(state):
            state = {k: v for k, v in state.items() if k not in _CALL_CACHES}
        return state

    def __setstate__(self, state):
        # Pickles of older modules lack the naming fields and the repr order list.
        if "_short_name" not in state:
            state["_short_name"] = state.get("_name")
            state["_name"] = None
        state.setdefault("quantize_disabled", False)
        if "_modules" not in state:
            state["_modules"] = [k for k, v in state.items() if _is_module_like(v)]
        self.__dict__.update(state)

    # ----- calling -----
    def register_forward_pre_hook(self, hook: Callable) -> HookHandler:
        """``hook(module, inputs)`` runs before forward; a non-None result replaces the inputs."""
        return HookHandler(self._forward_pre_hooks, hook)

    def register_forward_hook(self, hook: Callable) -> HookHandler:
        """``hook(module, inputs, outputs)`` runs after forward; a non-None result replaces the outputs."""
        return HookHandler(self._forward_hooks, hook)

    def __call__(self, *inputs, **kwargs):
        hook = _dispatch._trace_hook
        if hook is not None and getattr(hook, "names_ops", True):
            # a trace records: ops are named in its scope (a checked call of a recorded
            # trace names none: the recording's names are the program's)
            return self._call_in_scope(inputs, kwargs)
        if self._forward_pre_hooks or self._forward_hooks:
            return self._hooked_forward(inputs, kwargs)
        return self.forward(*inputs, **kwargs)  # (no hooks, nearly every call: one frame less)

    def _hooked_forward(self, inputs, kwargs):
        if self._forward_pre_hooks:  # (tested first: most calls have no hooks to copy)
            for hook in list(self._forward_pre_hooks.values()):
                modified = hook(self, inputs)
                if modified is not None:
                    inputs = modified if isinstance(modified, tuple) else (modified,)
        outputs = self.forward(*inputs, **kwargs)
        if self._forward_hooks:
            for hook in list(self._forward_hooks.values()):
                modified = hook(self, inputs, outputs)
                if modified is not None:
                    outputs = modified
        return outputs

    def _call_in_scope(self, inputs, kwargs):
        """A call under `megengine.utils.naming.AutoNaming`'s scope of this module (its
        ``name``, else its attribute path), which names the ops `trace.dump` writes."""
        scopes = _naming_scopes()  # (imported once: an import statement here costs ~2 us a
        scopes.append(self.name if self.name is not None else self._short_name)  # call)
        try:
            return self._hooked_forward(inputs, kwargs)
        finally:
            scopes.pop()

    # ----- discovery -----
    def _flatten(self, *, recursive=True, with_key=False, with_parent=False, prefix=None,
                 predicate: Callable[[Any], bool] = lambda _: True, seen=None):
        """Yield the Tensors and Modules under this module that satisfy ``predicate``
        (with their dotted keys and/or owning module when asked), depth first."""
        if seen is None:
            seen = {id(self)}
        head = "" if prefix is None else prefix + "."
        attrs = vars(self)
        # (caches are skipped: not state, and a setattr while walking may drop a Sequential's)
        for attr in sorted(attrs.keys() - _CALL_CACHES):
            for key, leaf in _expand_structure(attr, attrs[attr]):
                if id(leaf) in seen:
                    continue
                seen.add(id(leaf))
                if predicate(leaf):
                    if with_key and with_parent:
                        yield head + key, leaf, self
                    elif with_key:
                        yield head + key, leaf
                    elif with_parent:
                        yield leaf, self
                    else:
                        yield leaf
                if recursive and isinstance(leaf, Module):
                    yield from leaf._flatten(
                        recursive=True, with_key=with_key, with_parent=with_parent,
                        prefix=head + key if with_key else None, predicate=predicate, seen=seen,
                    )

    @staticmethod
    def _drop_requires_grad(kwargs):
        # Upstream 1.x accepts and ignores it (tensors have no settable requires_grad), and
        # logs so, in these words (no Python warning: -W error leaves such programs running)
        if "requires_grad" in kwargs:
            del kwargs["requires_grad"]
            logger.warning("Tensor currently has no requires_grad attribute so requires_grad "
                           "argument is ignored here")

    def parameters(self, recursive: bool = True, **kwargs) -> Iterable[Parameter]:
        """The Parameters of this module (and of its submodules when ``recursive``)."""
        self._drop_requires_grad(kwargs)
        yield from self._flatten(predicate=_is_parameter, recursive=recursive, **kwargs)

    def named_parameters(self, prefix: Optional[str] = None, recursive: bool = True,
                         **kwargs) -> Iterable[Tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs, e.g. ``("blocks.0.weight", p)``."""
        self._drop_requires_grad(kwargs)
        yield from self._flatten(with_key=True, prefix=prefix, predicate=_is_parameter,
                                 recursive=recursive, **kwargs)

    def buffers(self, recursive: bool = True, **kwargs) -> Iterable[Tensor]:
        """The buffers: Tensor attributes that are not Parameters (e.g. BatchNorm's running stats)."""
        yield from self._flatten(predicate=_is_buffer, recursive=recursive, **kwargs)

    def named_buffers(self, prefix: Optional[str] = None, recursive: bool = True,
                      **kwargs) -> Iterable[Tuple[str, Tensor]]:
        yield from self._flatten(with_key=True, prefix=prefix, predicate=_is_buffer,
                                 recursive=recursive, **kwargs)

    def tensors(self, recursive: bool = True, **kwargs) -> Iterable[Tensor]:
        """Parameters and buffers together."""
        yield from self._flatten(predicate=_is_tensor, recursive=recursive, **kwargs)

    def named_tensors(self, prefix: Optional[str] = None, recursive: bool = True,
                      **kwargs) -> Iterable[Tuple[str, Tensor]]:
        yield from self._flatten(with_key=True, prefix=prefix, predicate=_is_tensor,
                                 recursive=recursive, **kwargs)

    def children(self, **kwargs) -> "Iterable[Module]":
        """The direct submodules."""
        yield from self._flatten(predicate=_is_module, recursive=False, **kwargs)

    def named_children(self, **kwargs) -> "Iterable[Tuple[str, Module]]":
        yield from self._flatten(with_key=True, predicate=_is_module, recursive=False, **kwargs)

    def modules(self, **kwargs) -> "Iterable[Module]":
        """This module and every module under it."""
        yield (self, None) if kwargs.get("with_parent") else self
        yield from self._flatten(predicate=_is_module, **kwargs)

    def named_modules(self, prefix: Optional[str] = None, **kwargs) -> "Iterable[Tuple[str, Module]]":
        """(dotted name, module) pairs; this module comes first, named ``prefix`` or ``""``."""
        name = "" if prefix is None else prefix
        yield (name, self, None) if kwargs.get("with_parent") else (name, self)
        yield from self._flatten(with_key=True, prefix=prefix, predicate=_is_module, **kwargs)

    # ----- modes and gradients -----
    def apply(self, fn: "Callable[[Module], Any]") -> None:
        """Call ``fn(m)`` on this module and every module under it."""
        for m in list(self.modules()):
            fn(m)

    def train(self, mode: bool = True, recursive: bool = True) -> None:
        """Set ``training`` on this module and, when ``recursive``, on every module under it
        (each gets ``m.train(mode, recursive=False)``, so subclasses may override train)."""
        if not recursive:
            self.training = bool(mode)
            return

        def set_mode(m):
            if _takes_recursive(getattr(m.train, "__func__", m.train)):
                m.train(mode, recursive=False)
            elif m is self:  # a 0.x-style ``train(self, mode)`` override called us via super()
                m.training = bool(mode)
            else:  # 0.x called ``train(mode)`` on each submodule; its override recurses itself
                m.train(mode)

        self.apply(set_mode)

    def eval(self) -> None:
        """``train(False)``."""
        self.train(False)

    @deprecated(version="1.0")
    def zero_grad(self) -> None:
        """Set every parameter's existing gradient to zeros (deprecated since 1.0, as upstream:
        GradManager gives fresh gradients, or use ``optimizer.clear_grad()``). Each call warns a
        ``DeprecationWarning`` in upstream's words."""
        for p in self.parameters():
            if p.grad is not None:
                p.grad._reset(np.zeros(p.grad.shape, p.grad.dtype))

    def disable_quantize(self, value: bool = True) -> "Module":
        """Set ``quantize_disabled`` on this module and every module under it (quantization
        passes skip such modules); returns the module, so it can wrap a construction."""
        def fn(module):
            module.quantize_disabled = value

        self.apply(fn)
        return self

    @deprecated(version="1.0")
    def replace_param(self, params: dict, start_pos: int, seen=None) -> int:
        """Replace Parameters by position (deprecated since 1.0, as upstream): the module's
        direct Parameter attributes and those of its submodules are numbered from
        ``start_pos`` in discovery order (sorted attribute names, depth first; only direct
        attributes, not ones inside lists or dicts); ``params[i]``, when present, replaces
        number ``i`` and must have its shape. Returns how many Parameters were numbered.
        Replacements go through each owner's ``setattr`` (a `PyTorchModule` refuses one for a
        tensor that torch computes with); when one is refused, none is made. Each call warns a
        ``DeprecationWarning`` in upstream's words (upstream's also warns once more per
        submodule, from inside megengine: here the numbering does not call itself)."""
        if seen is None:
            seen = {id(self)}
        numbered = self._numbered_params(seen)
        chosen = [(i, owner, key, value, params[i]) for i, (owner, key, value) in
                  enumerate(numbered, start_pos) if params.get(i) is not None]
        for i, owner, key, value, new in chosen:
            if tuple(new.shape) != tuple(value.shape):
                raise ArgumentError(  # (upstream asserts: both)
                    f"replace_param: parameter {key!r} (position {i}) has shape "
                    f"{tuple(value.shape)}, the replacement has {tuple(new.shape)}"
                )
        done = []
        try:
            for _, owner, key, value, new in chosen:
                setattr(owner, key, new)
                done.append((owner, key, value))
        except BaseException:
            for owner, key, value in reversed(done):
                object.__setattr__(owner, key, value)
            raise
        return len(numbered)

    def _numbered_params(self, seen):
        """(owner, attribute name, Parameter) in `replace_param`'s numbering."""
        numbered = []
        attrs = vars(self)
        for key in sorted(attrs):
            value = attrs[key]
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, Parameter):
                numbered.append((self, key, value))
            elif isinstance(value, Module):
                numbered.extend(value._numbered_params(seen))
        return numbered

    # ----- state -----
    def _state_entries(self, prefix=""):
        """[(key, tensor, owning module)] for every parameter and buffer, in state_dict order:
        a module's own tensors first, then each submodule's, recursively."""
        entries = [(prefix + k, v, self)
                   for k, v in self._flatten(recursive=False, with_key=True, predicate=_is_tensor)]
        for k, sub in self._flatten(recursive=False, with_key=True, predicate=_is_module):
            entries.extend(sub._state_entries(prefix + k + "."))
        return entries

    def state_dict(self, rst=None, prefix="", keep_var=False):
        """OrderedDict of dotted name -> numpy array (the Tensors themselves with ``keep_var``).

        Built from `_state_dict`, as upstream's is, so a subclass that overrides `_state_dict`
        (renaming or reshaping its entries) is honoured at any depth of the module tree."""
        out = OrderedDict()
        for (owner_type, key), value in self._state_dict(rst, prefix, keep_var).items():
            if key in out:
                raise KeyError(f"state_dict: duplicated key {key!r}")
            flat = not keep_var and getattr(owner_type, "_flat_state", False)
            out[key] = value.reshape(-1) if flat else value
        return out

    def _state_dict(self, rst=None, prefix="", keep_var=False):
        """Upstream's hook under `state_dict`: ``rst`` filled with ``(module class, dotted
        name) -> value`` for this module's parameters and buffers, then each submodule's
        through the submodule's own ``state_dict(rst, prefix, keep_var)``."""
        if rst is None:
            rst = OrderedDict()
        for k, t in self._flatten(recursive=False, with_key=True, predicate=_is_tensor):
            rst[(type(self), prefix + k)] = t if keep_var else t.numpy()
        for k, sub in self._flatten(recursive=False, with_key=True, predicate=_is_module):
            sub.state_dict(rst, prefix + k + ".", keep_var)
        return rst

    def load_state_dict(self, state_dict, strict: bool = True) -> None:
        """Write values from ``state_dict`` into this module's parameters and buffers, in place.

        ``state_dict`` maps dotted names to numpy arrays or Tensors, or is a callable
        ``closure(key, tensor) -> array or None`` (None skips the key). Everything is checked
        before anything is written: on a shape/dtype mismatch, or with ``strict`` on a missing
        or unexpected key, one LoadStateDictError lists every problem and nothing changes.
        Without ``strict``, missing and unexpected keys are only logged (a warning).
        """
        if isinstance(state_dict, Mapping):
            state_dict = self._from_upstream_layouts(state_dict)

            def closure(key, _):
                return state_dict.get(key)
        elif callable(state_dict):
            closure = state_dict
        else:
            raise _StateDictTypeError(
                f"`state_dict` must load a dict or callable: expected a dict of name -> array "
                f"or a callable closure(key, tensor), got {type(state_dict).__name__}"
            )
        entries = self._state_entries()
        writes, missing, mismatched = [], [], []
        for key, var, owner in entries:
            value = closure(key, var)
            if value is None:
                missing.append(key)
                continue
            try:
                value = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
            except (TypeError, ValueError) as e:  # (a ragged list)
                raise _value_error(e, key) from None
            if value.shape != var.shape:
                if owner._flat_state and value.size == var.size:
                    value = value.reshape(var.shape)
                else:
                    mismatched.append(f"{key}: expected shape {var.shape}, got {value.shape}")
                    continue
            if value.dtype.kind == "c" and var.dtype.kind != "c":
                # refused, as every cast that would drop the imaginary part (torch's copy_
                # drops it with a warning; upstream's load fails on a complex value)
                mismatched.append(f"{key}: expected dtype {var.dtype}, got {value.dtype} (a "
                                  "complex value does not load into a real one; load np.real "
                                  "of it, or make the parameter complex first)")
                continue
            if var._pinned_storage:  # a PyTorchModule's: torch's dtype stays, as its copy_
                if not np.can_cast(value.dtype, var.dtype, "same_kind"):
                    mismatched.append(f"{key}: expected dtype {var.dtype}, got {value.dtype}")
                    continue
            elif value.dtype != var.dtype and value.dtype.metadata is None \
                    and var.dtype.metadata is None:
                # as upstream's, the value brings its dtype (a float16 checkpoint makes the
                # module float16), as a Tensor would store it (float64 as float32)
                try:
                    value = Tensor(value, device=var._device)
                except (TypeError, ValueError) as e:  # (strings, objects)
                    raise _value_error(e, key) from None
            writes.append((var, value))
        unexpected = []
        if isinstance(state_dict, Mapping):
            known = {key for key, _, _ in entries}
            unexpected = [k for k in state_dict if k not in known]
        problems = []
        if mismatched:
            problems.append("mismatched values:\n  " + "\n  ".join(mismatched))
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        if problems:
            raise LoadStateDictError(
                f"load_state_dict into {type(self).__name__} failed, nothing was loaded:\n"
                + "\n".join(problems)
            )
        # upstream 1.x (from 1.3) reports what strict=False let through on its logger, not as
        # Python warnings, in these words
        if unexpected:
            logger.warning("Unused params in `strict=False` mode, unused=%s", set(unexpected))
        if missing:
            logger.warning("Missing params in `strict=False` mode, missing=%s", set(missing))
        for var, value in writes:
            var._reset(value)  # in place: the storage (and anyone sharing it) keeps its address

    def _from_upstream_layouts(self, state_dict):
        """``state_dict`` with the entries of upstream's own storage layouts that a module here
        stores otherwise (an upstream LSTM's ``_flatten_weights``) rewritten by that module's
        ``_upstream_state(prefix, state_dict)``."""
        for name, module in self.named_modules():
            rewrite = getattr(module, "_upstream_state", None)
            if rewrite is not None:
                state_dict = rewrite(name + "." if name else "", state_dict)
        return state_dict

    # ----- printing -----
    def _module_info_string(self) -> str:
        """The layer's own settings for repr (subclasses override)."""
        return ""

    def __repr__(self):
        def indent(text):
            return text.replace("\n", "\n  ")

        extra = self._module_info_string()
        extra_lines = extra.split("\n") if extra else []
        # Children in assignment order (upstream's ``_modules``: a reassigned attribute keeps
        # its place, a deleted or overwritten-by-non-module one disappears).
        attrs = vars(self)
        order = attrs.get("_modules", [k for k, v in attrs.items() if _is_module_like(v)])
        child_lines = [
            f"({key}): {indent(repr(leaf))}"
            for attr in order if attr in attrs
            for key, leaf in _expand_structure(attr, attrs[attr])
            if isinstance(leaf, Module)
        ]
        lines = extra_lines + child_lines
        body = ""
        if len(extra_lines) == 1 and not child_lines:
            body = extra_lines[0]
        elif lines:
            body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{type(self).__name__}({body})"


@functools.lru_cache(maxsize=None)  # per train function: inspect.signature is slow-ish
def _takes_recursive(train_method) -> bool:
    """Whether a ``train`` override accepts 1.x's ``recursive`` argument.

    0.x's ``Module.train(mode)`` had none, and 0.x programs (MegEngine/Models' GAN models reset
    their traced steps in ``train``) override it so; calling such an override with
    ``recursive=False`` would raise a TypeError.
    """
    import inspect

    try:
        params = inspect.signature(train_method).parameters
    except (TypeError, ValueError):
        return True
    return "recursive" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

