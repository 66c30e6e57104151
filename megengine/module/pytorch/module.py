"""`PyTorchModule`: a torch.nn.Module as one op in megengine's graph, sharing memory both ways.

How it fits the engine (DESIGN.md, "The PyTorch bridge"):

* Every torch parameter is a megengine `Parameter` and every torch buffer a megengine buffer
  whose array *is* the torch tensor's storage (a zero-copy view made by the C++ operator). They
  sit in a tree of small mirror modules shaped like the torch module's own tree, so megengine's
  `named_parameters()` / `state_dict()` show the torch names (``conv1.weight``) under the
  wrapper's attribute name. Optimizer updates and `load_state_dict` write in place, so torch
  sees them at its next forward with no copying. One torch tensor is one megengine tensor
  (shared.py): tied weights and a module wrapped twice train each weight once, and a wrapper
  pickles and deep-copies as its torch module, its mirrors rebuilt as views on load. The mirrors
  are fixed at construction: every call checks that no mirrored tensor was replaced, and torch's
  registration hooks report state added later (_watch.py), so neither trains silently wrong.
* A call is one op (`_TorchCall`) whose inputs are the tensor arguments followed by the
  parameters. Its forward runs the torch module on zero-copy views, building a torch autograd
  graph only when megengine wants a gradient for an input or a parameter; its backward runs
  `torch.autograd.grad` over that graph and hands the gradients back as views.
"""
import collections
import copy
import dataclasses
import functools
import numbers
import operator

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ...core import amp as _amp
from ...core import dispatch as _dispatch
from ...core import torch_bridge as _bridge
from ...core.dispatch import Op, apply, declare_fresh_gradient, fresh_registry
from ...core.tensor import Parameter, Tensor
from ...device import canonical_device
from ..module import Module
from . import _flat_rnn, _graph, _watch
from .shared import TorchBuffer, TorchParameter, loaded_device, mirror_of
from .shared import torch_device as _torch_device

__all__ = ["PyTorchModule"]


class _Mirror(Module):
    """Holds one torch submodule's parameters and buffers under their torch names."""

    def __init__(self, torch_module):
        super().__init__()
        self._info = type(torch_module).__name__

    def _module_info_string(self):
        return "torch " + self._info

    def __setattr__(self, name, value):
        _refuse_replacing_a_mirror(self, name, value)
        super().__setattr__(name, value)


_DATA_PTR = torch.Tensor.data_ptr
_VERSION = operator.attrgetter("_version")


class _Hidden:
    """A list kept out of sight of Module's attribute scan (which looks inside plain lists)."""

    __slots__ = ("items",)

    def __init__(self):
        self.items = []

    def __iter__(self):
        return iter(self.items)


def _refuse_replacing_a_mirror(owner, name, value):
    """A mirror is the torch tensor's memory (or a torch submodule's tensors): something set in
    its place would be what megengine trains and saves while torch computes with the old one."""
    current = owner.__dict__.get(name)
    if value is not current and isinstance(current, (TorchParameter, TorchBuffer, _Mirror)):
        what = "tensors" if isinstance(current, _Mirror) else "tensor's memory"
        raise AttributeError(
            f"PyTorchModule: {name!r} of {owner._module_info_string()} is the torch {what}; "
            "something new in its place would never reach torch. Write into tensors in place "
            "(set_value, megengine.module.init, load_state_dict), or change the torch module "
            "and wrap it again"
        )


def _check_attribute_name(owner, name, what):
    if name in vars(owner) or hasattr(type(owner), name):
        raise ValueError(
            f"PyTorchModule: the torch {what} name {name!r} clashes with an attribute of "
            f"{type(owner).__name__}; rename it in the torch module"
        )


class PyTorchModule(Module):
    """Wrap a ``torch.nn.Module`` so it runs inside a megengine network and trains with it.

    Args:
        torch_module: the ``torch.nn.Module`` to embed. It is moved to ``device``; its parameters
            and buffers become megengine parameters and buffers sharing its memory.
        device: a megengine device name (``"cpu0"``, ``"xpux"``, ``"gpu0"``, ...); default: the
            default device.
        output_cnt: how many tensors the torch module returns (a tuple/list of that length, or
            a dict with that many entries; 1 means a single tensor), checked on every call;
            None: any number (a model whose outputs differ between train and eval, or come
            one per image).
        infer_shape: optional ``callable(*input_shapes) -> output shape(s)`` used by
            `infer_output_shapes` instead of running the module on torch's meta device.
    """

    def __init__(self, torch_module, device=None, output_cnt=1, *, infer_shape=None):
        if not isinstance(torch_module, torch.nn.Module):
            raise TypeError(
                f"PyTorchModule: expected a torch.nn.Module, got {type(torch_module).__name__}; "
                "wrap functions in a small nn.Module first"
            )
        if output_cnt is not None and (isinstance(output_cnt, bool) or not isinstance(
                output_cnt, numbers.Integral) or output_cnt < 1):
            raise ValueError(
                f"PyTorchModule: output_cnt must be a positive int (how many tensors the torch "
                f"module returns) or None (any number), got {output_cnt!r}"
            )
        if infer_shape is not None and not callable(infer_shape):
            raise TypeError(
                f"PyTorchModule: infer_shape must be callable(*input_shapes) -> shapes, got "
                f"{type(infer_shape).__name__}"
            )
        _refuse_unsupported(torch_module)
        device = canonical_device(device)  # unknown names raise a ValueError here
        super().__init__()
        _bridge.load_extension()  # compile (once) now rather than inside the first forward
        torch_module.to(_torch_device(device))
        _flat_rnn.flatten_once(torch_module)  # (before the mirrors: it may move the weights)
        self._torch_module = torch_module
        self._device = device
        self.output_cnt = None if output_cnt is None else int(output_cnt)
        self._infer_shape = infer_shape
        # per train/eval mode, learned on the first call: does the module write its inputs?
        self._copy_inputs = {}
        # per mode and set of inputs needing gradients, read off torch's graph on the first
        # recorded call (_graph.py): the order torch hands out gradients in, and whether the
        # graph holds a reentrant torch.utils.checkpoint (only torch's backward() runs it)
        self._learned = {}
        # the distinct parameters in torch's order, as megengine Parameters and as torch's own
        # tensors: a tied parameter is one op input, so torch sums its gradient once
        self._mge_params, self._torch_params = _Hidden(), _Hidden()
        # (torch module, name, address megengine views) per parameter and buffer: what every
        # call checks, so a replaced tensor can never silently stop the sharing
        self._shared = _Hidden()
        self._build_mirror(self, torch_module, set())
        self._collect_held()
        # (torch module, kind, name, value) of state that came into the torch module later
        # (_watch.py)
        self._added = _Hidden()
        # (torch module, name, the tensor before) of mirrored buffers its forward rebound
        self._rebound = _Hidden()
        _watch.watch(self, torch_module)
        self.train(torch_module.training)

    def _build_mirror(self, owner, tmod, seen):
        """Mirror ``tmod``'s parameters, buffers and stateful children onto ``owner``. A torch
        tensor reachable twice (tied weights) is one megengine tensor (`mirror_of`), which
        megengine's module walk lists once, under its first name, as torch does."""
        for name, p in tmod.named_parameters(recurse=False):
            _check_attribute_name(owner, name, "parameter")
            mp = mirror_of(p, self._device, parameter=True)
            if id(p) not in seen:
                seen.add(id(p))
                self._mge_params.items.append(mp)
                self._torch_params.items.append(p)
            self._shared.items.append((tmod, name, p.data_ptr()))
            setattr(owner, name, mp)
        non_persistent = getattr(tmod, "_non_persistent_buffers_set", ())
        for name, b in tmod.named_buffers(recurse=False):
            if b is None or name in non_persistent:
                continue
            _check_attribute_name(owner, name, "buffer")
            mb = mirror_of(b, self._device, parameter=False)
            self._shared.items.append((tmod, name, b.data_ptr()))
            setattr(owner, name, mb)
        for name, child in tmod.named_children():
            if not _watch.has_state(child):
                continue  # stateless (ReLU, pooling): nothing to expose
            _check_attribute_name(owner, name, "submodule")
            mirror = _Mirror(child)
            setattr(owner, name, mirror)
            self._build_mirror(mirror, child, seen)

    def __setattr__(self, name, value):
        _refuse_replacing_a_mirror(self, name, value)
        super().__setattr__(name, value)

    def __setstate__(self, state):
        # pickle / deepcopy: the mirrors came back as views of the loaded torch tensors (see
        # shared.py); only the addresses the per-call check compares against are new, and
        # mge.load's map_location may have moved everything (the torch tensors, the mirrors)
        self.__dict__.update(state)
        self.__dict__.pop("_checkpointed", None)  # saved by an earlier version: relearned
        self.__dict__.setdefault("_learned", {})
        self.__dict__.setdefault("_added", _Hidden())
        self.__dict__.setdefault("_rebound", _Hidden())
        _watch.watch(self, self._torch_module)
        _flat_rnn.flatten_once(self._torch_module, flatten=False)  # (the mirrors view them)
        self._device = loaded_device(self._device)
        where = _torch_device(self._device)
        for tmod, name, _ in self._shared.items:
            t = getattr(tmod, name)
            if t.device != where:
                raise RuntimeError(
                    f"PyTorchModule: loaded for {self._device}, but its torch tensor {name!r} "
                    f"is on {t.device}; a map_location that sends the saved devices of one "
                    "network to different places cannot keep it whole; map them to one device"
                )
        self._shared.items = [(tmod, name, getattr(tmod, name).data_ptr())
                              for tmod, name, _ in self._shared.items]
        self._collect_held()
        for mp, tp in zip(self._mge_params, self._torch_params):
            if mp.torch_tensor is not tp:
                raise RuntimeError(
                    "PyTorchModule: a loaded parameter does not view its torch tensor; this is a "
                    "bug, please report it"
                )

    @property
    def torch_module(self):
        """The wrapped torch module (its tensors share memory with this module's)."""
        return self._torch_module

    def get_param_by_name(self, name):
        """The megengine Parameter for a torch parameter name such as ``"conv1.weight"``
        (a tied parameter answers to each of its names)."""
        params = {key: t for key, t, _ in self._state_entries() if isinstance(t, Parameter)}
        if name not in params:
            raise KeyError(
                f"PyTorchModule.get_param_by_name: no parameter {name!r}; have {sorted(params)}"
            )
        return params[name]

    def train(self, mode=True, recursive=True):
        super().train(mode, recursive)
        self._torch_module.train(mode)
        return self

    def load_torch_state_dict(self, state_dict, strict=True):
        """Load a plain torch ``state_dict`` (e.g. from ``torch.load``) into the shared storage.

        torch's ``load_state_dict`` checks the entries (with ``strict``, missing and unexpected
        keys; shapes; values that are not tensors) with its copies held back; they are made
        afterwards, one tensor at a time, only when it raised nothing. So a refusal loads
        nothing (torch's own copies every entry that fits before it raises), and the call
        needs no copy of the module's state to undo one. Where a module of the tree has a
        load-state-dict post hook (``register_load_state_dict_post_hook``), which may read or
        change the loaded values, torch's copies are made as it goes instead, and a refusal
        writes back the values from before, held for the call."""
        self._check_shared()  # (a broken sharing first: nothing should load then)
        held = list(self._torch_module.state_dict(keep_vars=True).values())
        if any(m._load_state_dict_post_hooks for m in self._torch_module.modules()):
            before = [t.detach().clone() for t in held]
            try:
                result = self._torch_module.load_state_dict(state_dict, strict=strict)
            except BaseException:
                with torch.no_grad():
                    for t, value in zip(held, before):
                        t.copy_(value)
                raise
        else:
            deferred = _DeferredCopies(held)
            with deferred:
                result = self._torch_module.load_state_dict(state_dict, strict=strict)
            deferred.copy()
        self._check_shared()
        return result

    def torch_state_dict(self):
        """The wrapped module's state as a plain torch ``state_dict`` (for ``torch.save``)."""
        return self._torch_module.state_dict()

    def _collect_held(self):
        """(torch module, name, tensor, the address megengine views, a detached alias of its
        storage) per shared tensor: what the end of each call checks. ``self.w.data = new`` in
        a torch forward keeps the tensor object (no registration hook runs) and moves only its
        storage; the alias keeps the shared storage at hand to put back."""
        held = _Hidden()
        for tmod, name, address in self._shared.items:
            # (the tables, as _watch.py reads them: getattr may run a parametrization)
            t = tmod._parameters[name] if name in tmod._parameters else tmod._buffers[name]
            held.items.append((tmod, name, t, address, t.detach()))
        self._held = held
        # what each call compares, as two lists (one C-level map per call)
        self._held_at = _Hidden()
        self._held_at.items = ([t for _, _, t, _, _ in held.items],
                               [address for _, _, _, address, _ in held.items])

    def _check_not_moved(self):
        """After the torch forward: raise when it moved a shared tensor to new memory
        (``self.w.data = ...``, ``set_``), having put the shared memory, with its value from
        before, back. Else megengine's optimizer would update memory torch no longer reads,
        and this call's gradient would belong to the new memory. One address per tensor."""
        tensors, addresses = self._held_at.items
        if list(map(_DATA_PTR, tensors)) == addresses:  # the usual case: none moved
            return
        moved = [(tmod, name, t, alias) for tmod, name, t, address, alias in self._held.items
                 if t.data_ptr() != address]
        for _, _, t, alias in moved:
            t.data = alias  # (the same tensor object: megengine's mirror views it again)
        if moved:
            tmod, name, _, _ = moved[0]
            raise _moved_error(tmod, name, in_forward=True)

    def _check_shared(self):
        if self._added.items:
            _watch.refuse_added_state(self)
        for tmod, name, address in self._shared.items:
            # torch keeps parameters and buffers in these dicts (its __setattr__ routes them
            # there); reading them directly skips nn.Module.__getattr__, a Python call each.
            # (A scripted module's are wrappers: getattr then.)
            params = tmod._parameters
            current = params.get(name) if type(params) is dict else None
            if current is None:
                buffers = tmod._buffers
                if type(buffers) is dict:
                    current = buffers.get(name)
                if current is None:
                    current = getattr(tmod, name, None)
            if not isinstance(current, torch.Tensor) or current.data_ptr() != address:
                raise _moved_error(tmod, name, rnn=isinstance(current, torch.Tensor))

    def forward(self, *args, **kwargs):
        self._check_shared()
        if not kwargs and len(args) == 1 and type(args[0]) is Tensor \
                and args[0]._device == self._device:
            # the common call, one tensor argument: the template is a constant, no walk
            op = _TorchCall(self, _ONE_SLOT, _NO_KWARGS, 1)
            outs = apply(op, args[0], *self._mge_params.items)
        else:
            tensors, template = [], []
            for a in args:
                template.append(self._take_input(a, tensors))
            kw_template = {k: self._take_input(v, tensors) for k, v in kwargs.items()}
            op = _TorchCall(self, template, kw_template, len(tensors))
            outs = apply(op, *tensors, *self._mge_params.items)
        outs = outs if isinstance(outs, tuple) else (outs,)
        structure = op.structure
        if structure is None:
            return outs[0]
        if structure.kind is tuple and structure.flat:
            return outs
        return _rebuild(structure, outs)

    def _take_input(self, value, tensors):
        """Replace Tensor arguments (also inside lists, tuples and dicts, their subclasses
        too: a namedtuple, an OrderedDict, and in a dataclass's fields, as torch's FSDP moves
        its inputs) by placeholders. An object of another class holding megengine tensors in
        its attributes is refused: torch would get megengine tensors."""
        if _is_dataclass(value):
            template, names, items = copy.copy(value), [], []
            for field in dataclasses.fields(value):
                held = len(tensors)
                item = self._take_input(getattr(value, field.name), tensors)
                if len(tensors) > held:  # the others (names, options) stay in the copy
                    names.append(field.name)
                    items.append(item)
                    object.__setattr__(template, field.name, None)  # (frozen ones too)
            # (`_fill` makes a copy of the template with the torch tensors in those fields)
            return _Nested(type(value), dict(zip(names, items)), template) if names else value
        if isinstance(value, (list, tuple, dict)):
            kind, held = type(value), len(tensors)
            if isinstance(value, dict):
                more = (value.default_factory,) \
                    if isinstance(value, collections.defaultdict) else ()
                nested = _Nested(kind, {k: self._take_input(v, tensors)
                                        for k, v in value.items()}, more)
            else:
                nested = _Nested(kind, [self._take_input(v, tensors) for v in value])
            # a subclass holding no tensor is passed as it is (a torch.Size)
            return nested if kind in (list, tuple, dict) or len(tensors) > held else value
        if isinstance(value, Tensor):
            if value._device != self._device:
                raise ValueError(
                    f"PyTorchModule: an input is on {value._device} but the torch module is on "
                    f"{self._device}; move it with .to({self._device!r})"
                )
            tensors.append(value)
            return _InputSlot(len(tensors) - 1)
        if isinstance(value, torch.Tensor):
            raise TypeError(
                "PyTorchModule: got a torch.Tensor argument; pass megengine tensors (mge.tensor) "
                "so gradients flow through megengine"
            )
        held = [] if isinstance(value, type) else [
            k for k, v in getattr(value, "__dict__", {}).items() if _holds(v, Tensor)]
        if held:
            raise TypeError(
                f"PyTorchModule: an argument of class {type(value).__name__} holds megengine "
                f"tensors in its attributes {held}, which the wrapper does not look into (torch "
                "would get megengine tensors, and no gradient would reach them). Make the class "
                "a dataclass (its fields arrive as torch tensors), or pass the tensors as "
                "arguments, in tuples, lists or dicts if need be"
            )
        return value

    def infer_output_shapes(self, *input_shapes, dtype="float32"):
        """Output shapes for inputs of these shapes, without computing (torch's meta device).

        Uses ``infer_shape`` when one was given. Returns a list of shape tuples.
        """
        if self._infer_shape is not None:
            shapes = self._infer_shape(*input_shapes)
            return [tuple(s) for s in shapes] if shapes and isinstance(shapes[0], (tuple, list)) \
                else [tuple(shapes)]
        meta = {n: torch.empty_like(t, device="meta")
                for n, t in list(self._torch_module.named_parameters())
                + list(self._torch_module.named_buffers())}
        torch_dtype = getattr(torch, np.dtype(dtype).name)
        inputs = [torch.empty(s, dtype=torch_dtype, device="meta") for s in input_shapes]
        with torch.no_grad():
            out = torch.func.functional_call(self._torch_module, meta, tuple(inputs))
        return [tuple(t.shape) for t in _flatten_outputs(out, self.output_cnt)[0]]

    def _module_info_string(self):
        return f"{type(self._torch_module).__name__}, device={self._device}"


_MIRRORED_DTYPES = frozenset((torch.float16, torch.float32, torch.float64, torch.int8, torch.int16,
                              torch.int32, torch.int64, torch.uint8, torch.bool))  # numpy's too


def _moved_error(tmod, name, rnn=True, in_forward=False):
    """The error for a shared tensor ``name`` of torch module ``tmod`` found in new memory (by
    the end of a call that moved it, or at the start of the next one)."""
    if rnn and isinstance(tmod, torch.nn.RNNBase):
        # on a GPU, flatten_parameters() copies the weights into new memory on every call
        # (ATen's _cudnn_rnn_flatten_weight, then set_); torch's own keeps the shared weights
        # in place (_flat_rnn.py), an override of it or a direct call of ATen's does not
        return RuntimeError(
            f"PyTorchModule: the weight {name!r} of torch {type(tmod).__name__} moved to new "
            "memory, as a flatten of its weights on a GPU does (torch's flatten_parameters() "
            "leaves the weights a wrapper shares where they are; this was an override of it, "
            "_cudnn_rnn_flatten_weight or set_), so it no longer shares memory with megengine. "
            "Flatten the weights once, on the GPU, before wrapping the module, not in forward; "
            "then wrap the module again"
        )
    if in_forward:
        return RuntimeError(
            f"PyTorchModule: the torch module's forward moved its parameter or buffer {name!r} "
            "to new memory (self.w.data = ..., or set_), which megengine does not share: its "
            "optimizer would go on updating the old memory while torch computes with the new. "
            "The shared memory, holding the value from before the call, was put back. Write "
            "the new value in place instead (with torch.no_grad(): self.w.copy_(...))"
        )
    return RuntimeError(
        f"PyTorchModule: the torch parameter or buffer {name!r} was replaced by a new tensor "
        "(assigned anew, or moved by .to()/.half()), so it no longer shares memory with "
        "megengine; update tensors in place (param.data.copy_(...)) or wrap the module again"
    )


def _refuse_unsupported(torch_module):
    """Modules whose tensors cannot be mirrored at construction get a clear refusal here."""
    named = list(torch_module.named_parameters()) + list(torch_module.named_buffers())
    lazy = [name for name, t in named if isinstance(t, torch.nn.parameter.UninitializedTensorMixin)]
    non_persistent = {f"{prefix}.{b}" if prefix else b for prefix, m in torch_module.named_modules()
                      for b in getattr(m, "_non_persistent_buffers_set", ())}
    odd = {name: str(t.dtype).replace("torch.", "") for name, t in named
           if t.dtype not in _MIRRORED_DTYPES and name not in non_persistent}
    if odd:
        raise TypeError(
            f"PyTorchModule: the torch module's parameters or buffers {odd} have dtypes megengine "
            "cannot hold (numpy has no bfloat16 and megengine no complex tensors), so their memory "
            "cannot be shared. Keep bfloat16 ones in float32 (module.float()) and compute in "
            "bfloat16 under megengine.amp.autocast(low_prec_dtype='bfloat16') or torch.autocast "
            "inside forward; keep a complex one as its real view (torch.view_as_real, a last "
            "dimension of 2) and call torch.view_as_complex in forward; or register such a "
            "tensor as a non-persistent buffer (megengine then neither trains nor saves it)"
        )
    hooked = [name for name, t in named if getattr(t, "_post_accumulate_grad_hooks", None)]
    if hooked:
        raise ValueError(
            f"PyTorchModule: the torch parameters {hooked} have hooks that run after torch "
            "accumulates a gradient into .grad (register_post_accumulate_grad_hook); the wrapper "
            "hands gradients to megengine instead, so they would never run. Remove them and act "
            "on the gradient with a hook on the tensor (register_hook, which runs) or a megengine "
            "GradManager callback (GradManager().attach(params, callbacks=...))"
        )
    if lazy:
        raise ValueError(
            f"PyTorchModule: the torch module has uninitialized (lazy) parameters or buffers "
            f"{lazy}, e.g. from nn.LazyLinear; megengine must share their memory from the start. "
            "Run one forward pass in torch first to materialise them (e.g. "
            "torch_module(example_input)), or use the non-lazy layers (nn.Linear, nn.Conv2d)"
        )


class _InputSlot:
    """Stands for the i-th tensor input in an argument template."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __eq__(self, other):  # jit.trace compares ops' arguments call by call
        return type(other) is _InputSlot and other.index == self.index

    def __hash__(self):
        return hash(self.index)

    def __repr__(self):
        return f"<input {self.index}>"


class _Nested:
    """A list, tuple or dict argument that holds tensor inputs somewhere inside; ``more``: what
    a mapping's type takes before its items (`_remake`)."""

    __slots__ = ("kind", "items", "more")

    def __init__(self, kind, items, more=()):
        self.kind, self.items, self.more = kind, items, more

    def __eq__(self, other):
        return type(other) is _Nested and other.kind is self.kind and other.items == self.items \
            and other.more == self.more

    def __hash__(self):
        return hash(self.kind)


_ONE_SLOT = (_InputSlot(0),)  # the template of a call with one tensor argument (shared, unchanged)
_NO_KWARGS = {}


def _fill(template, values):
    if isinstance(template, _InputSlot):
        return values[template.index]
    if isinstance(template, _Nested):
        kind, items = template.kind, template.items
        if kind is dict:
            return {k: _fill(v, values) for k, v in items.items()}
        if kind is list or kind is tuple:
            return kind([_fill(v, values) for v in items])
        if isinstance(items, dict):  # a namedtuple, an OrderedDict: made as its own type
            return _remake(kind, list(items), template.more,
                           [_fill(v, values) for v in items.values()])
        return _remake(kind, None, None, [_fill(v, values) for v in items])
    return template


def _same_values(a, b):
    """Whether ``a`` holds ``b``'s values (NaN where ``b`` has NaN)."""
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _owns_its_storage(t):
    """Whether ``t`` is the only tensor on a storage that it spans whole: then nothing else
    (torch's graph, a parameter, another gradient, megengine's memory) can see its memory, and
    megengine may keep it as a ``.grad`` without a copy. Storage use counts as torch's own
    AccumulateGrad checks them before it steals a gradient: ``t``, the storage object made for
    the question, and the tensor ``t`` views when it is a view (mm's weight gradient is a
    transposed product made contiguous). A tensor that torch code keeps and returns as a
    gradient unchanged cannot be told apart (torch.autograd.grad hands it out as is too)."""
    storage = t.untyped_storage()
    return (t.is_contiguous() and t.storage_offset() == 0
            and storage.nbytes() == t.numel() * t.element_size()
            and _storage_use_count(storage._cdata) == (2 if t._base is None else 3))


def _autograd_grad_public(outs, wrt, out_grads):
    return torch.autograd.grad(outs, wrt, out_grads, allow_unused=True)


def _autograd_grad_engine(outs, wrt, out_grads):
    # torch.autograd.grad minus its argument normalisation (about 13 us a call, as much as a
    # small module's whole backward): each out_grad was made from megengine's gradient of that
    # output, so it has the output's shape already. Tensor subclasses (__torch_function__)
    # take the public path, which dispatches them.
    for o in outs:
        if type(o) is not torch.Tensor:
            return _autograd_grad_public(outs, wrt, out_grads)
    return _engine.run_backward(tuple(outs), tuple(out_grads), False, False, tuple(wrt), True,
                                False)


_engine = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)
_autograd_grad = (_autograd_grad_engine if callable(getattr(_engine, "run_backward", None))
                  else _autograd_grad_public)

def _grads_by_backward(outs, wrt, out_grads, params):
    """``torch.autograd.grad`` for a graph holding a reentrant checkpoint: torch's plain
    ``backward()`` into ``.grad``, which is taken from ``wrt``. Every leaf tensor it reaches gets
    its own ``.grad`` back, so torch's ``.grad`` stays as it was, as on the usual path: ``wrt``,
    the module's parameters, the leaves of the graph (a tensor captured from outside) and those
    the checkpoint's forward, re-run inside backward, uses (`_LeafGrads`)."""
    reached = list({id(t): t for t in (*wrt, *params, *_graph.leaves(outs))}.values())
    kept = [t.grad for t in reached]
    for t in reached:
        t.grad = None
    inside = _LeafGrads(reached)
    try:
        if _autograd_grad is _autograd_grad_engine:
            with inside:  # the engine's entry point: torch.autograd.backward is itself a call
                # the mode handles, and would run with the mode off
                _engine.run_backward(tuple(outs), tuple(out_grads), False, False, (), True, True)
        else:  # a torch without that entry point: leaves used inside the checkpoint not kept
            torch.autograd.backward(outs, out_grads)
        return [t.grad for t in wrt]
    finally:
        inside.restore()
        for t, g in zip(reached, kept):
            t.grad = g


class _DeferredCopies(TorchFunctionMode):
    """Active while torch's ``load_state_dict`` checks a state dict: its in-place copies into
    ``tensors`` (a module's parameters and buffers) are kept as pairs, not made; `copy` makes
    them afterwards, in torch's order (a tied tensor named twice takes the last value, as with
    torch). Each pair's copy is tried on one value here (a dtype torch does not convert, such
    as a quantized tensor's, a sparse tensor), so that it is refused before anything is
    written."""

    def __init__(self, tensors):
        super().__init__()
        self.targets = {id(t) for t in tensors}
        self.pairs = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.copy_ and id(args[0]) in self.targets and not kwargs \
                and len(args) == 2 and isinstance(args[1], torch.Tensor):
            target, value = args
            if value.numel():  # (torch's error, if any, from a view of one value)
                target.new_empty(()).copy_(value[(0,) * value.dim()])
            self.pairs.append((target, value))
            return target
        return func(*args, **(kwargs or {}))

    def copy(self):
        with torch.no_grad():
            for target, value in self.pairs:
                target.copy_(value)


class _LeafGrads(TorchFunctionMode):
    """Active while torch's backward re-runs a reentrant checkpoint's forward: keeps the
    ``.grad`` (the tensor and a copy of its values, which torch accumulates into in place) of
    each leaf tensor that forward uses, before the checkpoint's own backward() reaches it;
    `restore` puts them back. Not those of ``reached``, whose ``.grad`` the caller set aside
    (by then it may hold a part of the gradient the caller takes). The checkpoint's backward()
    is itself a call the mode handles, with the mode off: it runs with the mode on again, so
    that a reentrant checkpoint nested inside, whose forward re-runs there, is watched too."""

    def __init__(self, reached):
        super().__init__()
        self.kept = {}
        self.reached = {id(t) for t in reached}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in (*args, *kwargs.values()):
            for t in a if type(a) in (list, tuple) else (a,):
                if isinstance(t, torch.Tensor) and t.is_leaf and t.requires_grad \
                        and id(t) not in self.kept and id(t) not in self.reached:
                    g = t.grad
                    self.kept[id(t)] = (t, g, None if g is None else g.clone())
        if func is torch.autograd.backward and _autograd_grad is _autograd_grad_engine:
            grads = kwargs.get("grad_tensors")
            if type(grads) in (tuple, list) and all(type(g) is torch.Tensor for g in grads):
                retain = kwargs.get("retain_graph")
                create = bool(kwargs.get("create_graph"))
                with self:  # (the engine's entry point: torch.autograd.backward would come
                    # back here with the mode off)
                    return _engine.run_backward(
                        tuple(args[0]), tuple(grads), create if retain is None else retain,
                        create, tuple(kwargs.get("inputs") or ()), True, True)
        return func(*args, **kwargs)

    def restore(self):
        for t, g, values in self.kept.values():
            if g is not None:
                g.copy_(values)
            t.grad = g


_FRESH_MIN_NUMEL = 2048  # below this, a copy costs about what the storage check does
_storage_use_count = getattr(torch._C, "_storage_Use_Count", lambda cdata: 0)  # 0: never fresh


def _flatten_outputs(out, expected):
    """Torch outputs as a list of tensors plus the structure to rebuild (`_rebuild`): None for a
    single tensor, else the `_Node` of its container, containers nested to any depth (a
    detector's list of dicts) and holding None, numbers and strings as they are."""
    kind = type(out)
    if isinstance(out, torch.Tensor):
        tensors, structure = [out], None
    elif (kind is tuple or kind is list) and all(type(t) is torch.Tensor for t in out):
        tensors, structure = list(out), _flat_sequence(kind, len(out))  # the usual cases
    elif kind is dict and all(type(t) is torch.Tensor for t in out.values()):
        tensors = list(out.values())
        structure = _Node(dict, list(out), (), [_TENSOR] * len(tensors))
    else:
        tensors = []
        structure = _take_outputs(out, tensors)
        if type(structure) is not _Node:  # None, a number, a string
            raise TypeError(
                f"PyTorchModule: the torch module returned {type(out).__name__}; it must return "
                "a tensor, or tuples, lists, dicts or dataclasses of tensors (nested too)"
            )
    if expected is not None and len(tensors) != expected:
        raise ValueError(
            f"PyTorchModule: the torch module returned {len(tensors)} tensor(s) but "
            f"output_cnt={expected}; pass output_cnt={len(tensors)}, or output_cnt=None where "
            "the count changes (train and eval outputs differ, one item per image)"
        )
    if not tensors:
        raise ValueError(
            f"PyTorchModule: the torch module returned {type(out).__name__} with no tensor in "
            "it; a wrapped module must return at least one tensor"
        )
    return tensors, structure


_TENSOR = object()  # a tensor's place in an output structure
_KEPT = (type(None), bool, int, float, complex, str)  # output values passed on as they are


class _Node:
    """An output container: its type, its keys (a mapping's, a dataclass's fields that hold
    tensors) or None, what makes it (`_rebuild`), and its items' structures (`_TENSOR`, a
    `_Node`, or a value kept as it is)."""

    __slots__ = ("kind", "keys", "more", "items", "flat")

    def __init__(self, kind, keys, more, items):
        self.kind, self.keys, self.more, self.items = kind, keys, more, items
        self.flat = all(i is _TENSOR for i in items)  # tensors only: no walk to rebuild it


@functools.lru_cache(maxsize=64)
def _flat_sequence(kind, n):
    """The `_Node` of a plain tuple or list of ``n`` tensors (shared: nodes never change)."""
    return _Node(kind, None, None, [_TENSOR] * n)


def _is_dataclass(out):
    return dataclasses.is_dataclass(out) and not isinstance(out, type)


def _take_outputs(out, tensors):
    """``out``'s structure for `_rebuild`, its tensors appended to ``tensors`` in order. For a
    mapping, ``more`` holds the arguments its type takes before the items (a defaultdict's
    default_factory); for a dataclass, a copy of it without its tensor-holding fields."""
    if isinstance(out, torch.Tensor):
        tensors.append(out)
        return _TENSOR
    if isinstance(out, _KEPT):
        return out
    if isinstance(out, (tuple, list)):
        return _Node(type(out), None, None, [_take_outputs(v, tensors) for v in out])
    if isinstance(out, dict):
        more = (out.default_factory,) if isinstance(out, collections.defaultdict) else ()
        return _Node(type(out), list(out.keys()), more,
                     [_take_outputs(v, tensors) for v in out.values()])
    if _is_dataclass(out):
        template, names, items = copy.copy(out), [], []
        for field in dataclasses.fields(out):
            value = getattr(out, field.name)
            if _holds(value, torch.Tensor):  # the others (names, strides, objects) stay in the copy
                names.append(field.name)
                items.append(_take_outputs(value, tensors))
                object.__setattr__(template, field.name, None)  # (frozen ones too)
        return _Node(type(out), names, template, items)
    if isinstance(out, Tensor):
        raise TypeError(
            "PyTorchModule: the torch module returned a megengine Tensor: megengine tensors "
            "reached it other than as arguments (through an attribute of the torch module, or "
            "deeper inside an argument object than its own attributes, where the wrapper does "
            "not look), and the torch module computed with them outside torch. Pass them as "
            "arguments, in tuples, lists, dicts or dataclasses if need be: they arrive as torch "
            "tensors"
        )
    raise TypeError(
        f"PyTorchModule: the torch module returned a {type(out).__name__} among its outputs; "
        "outputs are tensors in tuples, lists, dicts and dataclasses, next to None, numbers "
        "and strings"
    )


def _holds(value, kind):
    """Whether ``value`` is a tensor of class ``kind`` (torch's or megengine's), or holds one in
    tuples, lists, dicts and dataclasses."""
    if isinstance(value, kind):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds(v, kind) for v in value)
    if isinstance(value, dict):
        return any(_holds(v, kind) for v in value.values())
    if _is_dataclass(value):
        return any(_holds(getattr(value, f.name), kind) for f in dataclasses.fields(value))
    return False


def _rebuild(structure, outs):
    """The torch module's output with megengine tensors ``outs`` in its tensors' places."""
    return _build(structure, iter(outs))


def _build(node, outs):
    if node is _TENSOR:
        return next(outs)
    if type(node) is not _Node:
        return node  # None, a number, a string
    values = [next(outs) for _ in node.items] if node.flat \
        else [_build(item, outs) for item in node.items]
    return _remake(node.kind, node.keys, node.more, values)


def _remake(kind, keys, more, values):
    """A container of type ``kind`` holding ``values`` (under ``keys`` for a mapping or a
    dataclass) where that type can be made from them (a namedtuple, ``torch.return_types.max``,
    transformers' ``ModelOutput``, a defaultdict with its default_factory in ``more``, a
    dataclass: a copy of ``more`` with the fields ``keys`` replaced), else the plain tuple, list
    or dict it derives from."""
    if keys is None:
        plain = tuple if issubclass(kind, tuple) else list
        if kind is not plain:  # a namedtuple has _make; torch.return_types take one sequence
            made = _made(lambda: kind._make(values) if hasattr(kind, "_make") else kind(values))
            if isinstance(made, kind) and len(made) == len(values) \
                    and all(a is b for a, b in zip(made, values)):
                return made
        return plain(values)
    if type(more) is not tuple:  # a dataclass: the copy without its tensor fields
        made = copy.copy(more)
        for name, v in zip(keys, values):
            object.__setattr__(made, name, v)
        return made
    items = dict(zip(keys, values))
    if kind is not dict:  # a dataclass-like mapping takes keywords, others a mapping
        for make in (lambda: kind(*more, **items), lambda: kind(*more, items)):
            made = _made(make)
            if isinstance(made, kind) and list(made.keys()) == keys \
                    and all(a is b for a, b in zip(made.values(), values)):
                return made
    return items


def _made(make):
    """``make()``, or None where the container's type cannot be made that way."""
    try:
        return make()
    except Exception:  # a constructor taking other arguments: any error it chooses
        return None


def _quantized_input(i, dtype):
    from ...core.dtype import dtype_name

    return TypeError(
        f"PyTorchModule: input {i} is a quantized tensor ({dtype_name(dtype)}); torch would get "
        "its stored integers without the scale. Pass its values, x.astype('float32') (torch's "
        "own quantized tensors: torch.quantize_per_tensor inside the torch module)")


class _TorchCall(Op):
    """One call of the wrapped torch module: forward through torch, backward by torch.autograd."""
    reads_standard_layout = True  # "nhwc" inputs arrive C-contiguous (megengine.core.format)
    # torch code may return outputs whose shapes its inputs' values decide (``x[x > 0]``,
    # ``nonzero``, a detector's boxes), so a traced program lets them change from call to call
    data_shaped = True

    def __init__(self, wrapper, template, kw_template, n_inputs):
        self.wrapper = wrapper
        self.template, self.kw_template = template, kw_template
        self.n_inputs = n_inputs
        self.structure = None
        self.device = wrapper._device  # the dispatcher's device for a call with no tensor inputs

    def __repr__(self):
        return f"PyTorchModule({type(self.wrapper._torch_module).__name__})"

    def profile_label(self):
        """Which module ran, for this call's events in a `megengine.utils.profiler` trace
        (``TorchCall(net.body: Linear)``): the torch module's class, after the wrapper's name
        in the network once it has one, so that several wrappers' calls can be told apart.
        Only the profiler asks, so calls without one pay nothing for it."""
        w = self.wrapper
        tmod = w._torch_module
        # (a scripted module's class is RecursiveScriptModule; original_name is the user's)
        label = getattr(tmod, "original_name", None) or type(tmod).__name__
        where = w.name if w.name is not None else w._name
        return f"{where}: {label}" if where else label

    def output_count_advice(self, recorded, now):
        """What a trace says when this call gave ``now`` tensors where it recorded ``recorded``
        (`megengine.jit.record.count_mismatch_text`)."""
        return (f"{self!r} has output_cnt=None, which lets its number of outputs change "
                "between eager calls only: a trace records one per call signature, and neither "
                "the data nor the torch module's train/eval mode is part of the signature. Make "
                "the torch module return a fixed number of tensors (pad them, or stack them "
                "into one), trace training and evaluation as two functions (a trace each), or "
                "call this PyTorchModule outside the traced function")

    def forward(self, *arrays):
        if torch.is_inference_mode_enabled():
            # torch.inference_mode() around the call: megengine decides whether torch records
            # a graph, as under torch.no_grad(), and tensors made in that mode have no version
            # counters, which the checks for writes into inputs and parameters read
            with torch.inference_mode(False):
                return self.forward(*arrays)
        w = self.wrapper
        n = self.n_inputs
        need = self.needs_input_grad
        want_grad = any(need)
        mode = w._torch_module.training
        learned = w._copy_inputs.get(mode)
        copy_inputs = learned is not False  # first call in each mode: protect inputs, then learn
        inputs = []  # the leaves gradients are taken for
        ext = _bridge._ext or _bridge.load_extension()  # loaded by the wrapper's __init__
        to_torch = ext.to_torch
        for i in range(n):
            t = to_torch(arrays[i])
            if t.is_floating_point():
                inputs.append(t.requires_grad_(need[i]))
            elif arrays[i].dtype.metadata is not None:  # (its scale is dtype metadata)
                raise _quantized_input(i, arrays[i].dtype)
            else:
                inputs.append(t)
        # What the module gets: the leaves, or their copies while it may write into them (a
        # clone of a leaf that needs a gradient is no leaf, so an in-place op on it is legal
        # and differentiated, as on the activation a torch network passes on)
        given = [t.clone() for t in inputs] if copy_inputs else inputs
        versions = [t._version for t in given]
        template = self.template
        if template is _ONE_SLOT:
            args, kwargs = given, _NO_KWARGS
        else:
            args = [_fill(t, given) for t in template]
            kwargs = {k: _fill(v, given) for k, v in self.kw_template.items()}
        # torch may write parameters in place in forward (nn.Embedding(max_norm=...) renormalises
        # the rows it looks up, a clamp_ under no_grad): a megengine op recorded before may
        # have kept the old value for its backward, which must then raise, as torch's does
        params = w._torch_params.items
        param_versions = list(map(_VERSION, params)) if _dispatch._recording > 0 else None
        try:
            if _amp._enabled:  # megengine.amp.autocast reaches torch as torch.autocast, same dtype
                with torch.set_grad_enabled(want_grad), \
                        _amp.torch_autocast(_torch_device(w._device).type):
                    out = w._torch_module(*args, **kwargs)
            elif torch.is_grad_enabled() == want_grad:  # the usual case: no mode switch to pay for
                out = w._torch_module(*args, **kwargs)
            else:
                with torch.set_grad_enabled(want_grad):
                    out = w._torch_module(*args, **kwargs)
        except BaseException as e:
            # a forward that raised after rebinding a buffer (or a parameter) leaves the new
            # tensor under the name, as torch alone does; the shared one goes back (holding the
            # buffer's new value) so that the next call runs, and the error is the module's
            if w._rebound.items:
                try:
                    _watch.settle_rebound(w)
                except RuntimeError as refused:
                    e.add_note(f"PyTorchModule, after it: {refused}")
            try:
                w._check_not_moved()
            except RuntimeError as moved:
                e.add_note(f"PyTorchModule, after it: {moved}")
            if not copy_inputs and "leaf Variable that requires grad" in str(e) \
                    and any(t.requires_grad for t in given):
                # (torch refused before writing: the input is as it was)
                e.add_note(
                    f"{self!r}: if the module wrote into an input in place, it did not on its "
                    "first call in this mode, when the wrapper learned to pass its inputs "
                    "without copies; avoid in-place ops on inputs, or make the module write "
                    "on every call (it then gets copies, and the write is differentiated)")
            raise
        if w._rebound.items:  # ``self.ema = self.ema * 0.9 + ...`` in forward (_watch.py)
            _watch.settle_rebound(w)
        if w._added.items:  # the module made new state in this forward (_watch.py)
            _watch.refuse_added_state(w)
        w._check_not_moved()
        if param_versions is not None and list(map(_VERSION, params)) != param_versions:
            for mp, p, version in zip(w._mge_params.items, params, param_versions):
                if p._version != version:
                    _dispatch.note_pinned_write(mp._data)
        if type(out) is torch.Tensor and w.output_cnt == 1:
            outs, self.structure = [out], None
        else:
            outs, self.structure = _flatten_outputs(out, w.output_cnt)
        if _amp._enabled:  # under autocast: bfloat16 (no numpy dtype) -> float32
            outs = _amp.torch_outputs(outs)
        on_gpu = w._device[0] == "g"
        for o in outs:
            if o.is_cuda != on_gpu:  # made on the other side (torch.arange(n) in a module on
                where = _torch_device(w._device)  # a GPU): the engine array must match its
                outs = [o if o.is_cuda == on_gpu else o.to(where) for o in outs]  # label
                break
        written = [i for i in range(n) if given[i]._version != versions[i]]
        if learned is None:
            # A module that writes into its inputs would corrupt megengine's tensors through
            # the shared memory; such a module keeps getting copies, others get views. Learned
            # per mode: train and eval often run different code. A write through ``x.data``
            # bumps no version counter, so the copies' values are compared too, once.
            w._copy_inputs[mode] = bool(written) or not all(
                _same_values(given[i], inputs[i]) for i in range(n))
        elif written and not copy_inputs:
            raise RuntimeError(
                f"{self!r} wrote into its input(s) {written} in place on this call, changing "
                "megengine tensors that share that memory; avoid in-place ops on inputs "
                "(e.g. nn.ReLU(inplace=True) as the first layer)"
            )
        if want_grad:
            self.inputs = inputs
            self.outs = outs
            # callbacks see this op's inputs and parameters in the order torch hands them out
            known = w._learned.get((mode, need))
            if known is None:
                known = w._learned[mode, need] = _graph.read(inputs, w._torch_params.items,
                                                              outs, given)
            self.grad_order, self.checkpointed = known
        # Outputs are values. torch may return memory others see (an input or a parameter as
        # is or as a view, one tensor twice, a stride-0 expand), and megengine's set_value
        # writes into a tensor's own memory; as the view of an array it copies instead
        # (core/tensor.py, `_reset`), as for megengine's own view ops.
        from_torch = ext.from_torch
        return tuple([from_torch(o.detach()).view() for o in outs]) if len(outs) > 1 \
            else from_torch(outs[0].detach()).view()

    def backward(self, *grads):
        n = self.n_inputs
        need = self.needs_input_grad
        params = self.wrapper._torch_params.items
        inputs = self.inputs
        # what torch differentiates, and the op input each gradient belongs to; a frozen torch
        # parameter (requires_grad=False) gets no gradient, even when attached
        wrt, slots = [], []
        for i in range(n):
            if need[i]:
                wrt.append(inputs[i])
                slots.append(i)
        for i, tp in enumerate(params, n):
            if need[i] and tp.requires_grad:
                wrt.append(tp)
                slots.append(i)
        ext = _bridge._ext or _bridge.load_extension()  # loaded by the wrapper's __init__
        to_torch = ext.to_torch
        if len(grads) == 1:  # one output (always used: backward only runs for used outputs)
            o = self.outs[0]
            outs, out_grads = ([o], [to_torch(grads[0])]) if o.requires_grad else ((), ())
        else:
            outs, out_grads = [], []
            for o, g in zip(self.outs, grads):
                if o.requires_grad:
                    outs.append(o)
                    out_grads.append(to_torch(g))
        result = [None] * len(need)
        if outs and wrt:
            try:
                got = (_grads_by_backward(outs, wrt, out_grads, params) if self.checkpointed
                       else _autograd_grad(outs, wrt, out_grads))
            except RuntimeError as e:
                if "use_reentrant" in str(e):
                    raise RuntimeError(
                        f"{self!r} ran torch.utils.checkpoint with use_reentrant=True on "
                        "this call but not on its first recorded call like it (same mode, "
                        "same inputs needing gradients), when the wrapper learns how to run "
                        "torch's backward; pass use_reentrant=False to checkpoint (torch's "
                        "recommendation), or checkpoint on every call"
                    ) from e
                if "modified by an inplace operation" in str(e):
                    raise RuntimeError(
                        f"{self!r}: a value torch saved for this backward was changed in "
                        "place. If the program wrote a parameter or buffer of the wrapped "
                        "module (set_value, +=, an optimizer's step, load_state_dict) after "
                        "the forward and before gm.backward, write it before `with gm:` or "
                        "after the backward. If the torch module wrote a tensor in its own "
                        "forward after using it (an input: x.add_(1) after x * x; "
                        "nn.Embedding(max_norm=...) renormalises the rows it looks up), torch "
                        "alone raises the same: use the value before the write, or compute "
                        f"with a copy (torch: {e})"
                    ) from e
                raise
            # torch may return one tensor (or the incoming gradient itself) for several inputs,
            # e.g. through an add; megengine must never give two tensors one gradient array,
            # or an in-place edit (clip_grad_norm) would apply twice. A small gradient gets a
            # copy of its own (cheaper than asking torch who else sees its memory); a large
            # one is kept when torch's storage counts say nothing else can see it.
            if self.device.startswith("cpu"):  # all gradients in one C++ call (csrc: hand_over)
                ext.hand_over(got, slots, result, (*out_grads, *inputs), _FRESH_MIN_NUMEL,
                              fresh_registry())
            else:  # CUDA: no copies for small gradients (a copy is a kernel launch there)
                self._hand_over(ext, got, slots, result, out_grads, inputs, 0)
        self.inputs = self.outs = None  # drop the torch graph
        return tuple(result)

    @staticmethod
    def _hand_over(ext, got, slots, result, out_grads, inputs, min_numel):
        """``ext.hand_over`` written in Python, for CUDA gradients (CuPy views).

        CUDA passes ``min_numel`` 0: a small gradient is kept under the same storage checks as a
        large one instead of being copied, since a copy there is a kernel launch (tens of
        microseconds of host time, more than the checks), not the memcpy it is on the CPU."""
        taken = None
        from_torch = ext.from_torch
        for i, g in zip(slots, got):
            if g is None:
                continue
            if g.layout is not torch.strided:  # sparse (nn.Embedding(sparse=True)): made dense
                g = g.to_dense()
            if g.numel() < min_numel:
                result[i] = from_torch(g).copy()
                continue
            if taken is None:
                taken = {t.data_ptr() for t in out_grads}
                taken.update(t.data_ptr() for t in inputs)
            address = g.data_ptr()
            if address in taken:
                g = g.clone()
                address = g.data_ptr()
                fresh = True
            else:
                fresh = _owns_its_storage(g)
            taken.add(address)
            a = from_torch(g)
            result[i] = declare_fresh_gradient(a) if fresh else a

    def grad_graph(self, inputs, outputs, grads):
        """The backward as a recorded op, for higher-order gradients (see _higher_order)."""
        from ._higher_order import grad_graph

        return grad_graph(self, inputs, outputs, grads)
