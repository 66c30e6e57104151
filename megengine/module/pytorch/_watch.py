"""Torch state changed after wrapping: new state refused, buffers rebound in forward kept shared.

A `PyTorchModule` mirrors its torch module's parameters, buffers and stateful submodules once, when
it is built, and megengine's optimizers and GradManagers hold those mirrors. Torch state that comes
later would be used by torch's forward but never trained or saved by megengine, silently: a
parameter added to the module (``m.scale = nn.Parameter(...)``), a persistent buffer registered
(or registered as None, then set) in ``forward``, or a stateful submodule put in (``model.fc =
nn.Linear(...)`` after wrapping: the old head keeps its tensors, so the per-call address check in
module.py sees nothing wrong). Walking the torch tree on every call would cost more than many
calls; torch runs its global registration hooks on every such assignment instead, so watching
costs a call nothing. The hooks note what came into a watched torch module; the wrapper's call
reads the notes (`refuse_added_state`).

Not noticed, because nothing trains wrongly: stateless submodules swapped (``ReLU`` for ``GELU``;
they are watched from then on), non-persistent buffers (not state megengine saves), a new name for
mirrored tensors (``self.head = self.fc``), tensors replaced under a known name (module.py's
address check raises for those).

A mirrored buffer that the torch module's own forward rebinds (``self.ema = self.ema * 0.9 +
...``, a common torch idiom for running statistics, where torch's BatchNorm writes in place) is
the one replacement that is taken in: the same hook notes it, and after the forward (also one
that raised: torch's module keeps the new value then too) `settle_rebound` copies the new value
into the shared memory and puts the shared tensor back under the name, so torch and megengine go
on seeing one tensor with the value torch gave it. A mirrored parameter rebound in forward
(``self.w = nn.Parameter(...)``) cannot be taken in: megengine's optimizers hold the old one, and
torch's graph leads to the new one, so neither would be trained. `settle_rebound` puts the old
one back and raises, before megengine records the call.
"""
import weakref

import torch

__all__ = ["watch", "has_state", "refuse_added_state", "settle_rebound"]

# torch module -> the wrappers whose torch tree holds it
_watched = weakref.WeakKeyDictionary()
_hooks = []


def has_state(module):
    """Whether a torch module holds parameters or buffers (what a wrapper mirrors)."""
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


def watch(wrapper, torch_module):
    """Note registrations into ``torch_module``'s tree in ``wrapper._added.items`` from now on."""
    if not _hooks:
        hooks = torch.nn.modules.module
        _hooks.extend([hooks.register_module_parameter_registration_hook(_on_parameter),
                       hooks.register_module_buffer_registration_hook(_on_buffer),
                       hooks.register_module_module_registration_hook(_on_module)])
    for m in torch_module.modules():
        _watched.setdefault(m, weakref.WeakSet()).add(wrapper)


def _note(module, kind, name, value, replacing=False):
    # torch may still refuse the registration after its hooks ran (a scripted module), and a
    # buffer's persistence is set after them: `refuse_added_state` checks what is there in the end.
    # A new name for tensors a wrapper mirrors (``self.head = self.fc``) is trained as it is
    for wrapper in _watched.get(module, ()):
        if replacing or not _only_mirrored(wrapper, kind, value):
            wrapper._added.items.append((module, kind, name, value))


def _only_mirrored(wrapper, kind, value):
    """Whether ``value`` (a parameter, buffer or submodule) holds only tensors ``wrapper``
    mirrors."""
    mirrored = set()
    for m, name, _ in wrapper._shared.items:  # (the tables: getattr may run a parametrization)
        table = m._parameters if name in m._parameters else m._buffers
        if name in table:
            mirrored.add(id(table[name]))
    tensors = value.state_dict(keep_vars=True).values() if kind == "submodule" else (value,)
    return all(id(t) in mirrored for t in tensors)


def _on_parameter(module, name, param):
    if module not in _watched or param is None:
        return
    params = module._parameters
    if name not in params:
        _note(module, "parameter", name, param)
    elif type(params) is dict and params[name] is not None and params[name] is not param:
        _note_rebinding(module, name, params[name])


def _on_buffer(module, name, buffer):
    if module not in _watched or buffer is None:
        return
    buffers = module._buffers
    if name not in buffers:
        _note(module, "buffer", name, buffer)
    elif type(buffers) is dict:  # (a scripted module's is a wrapper, and sets no buffers here)
        old = buffers[name]
        if old is None:  # registered empty, so not mirrored: state that came later
            _note(module, "buffer", name, buffer)
        elif old is not buffer:
            _note_rebinding(module, name, old)


def _note_rebinding(module, name, old):
    # the hooks run before torch stores the new tensor, so the table still holds the old one
    # (the shared one, on the first rebinding of a call)
    for wrapper in _watched[module]:
        noted = wrapper._rebound.items
        if not any(m is module and n == name for m, n, _ in noted):
            noted.append((module, name, old))


def _on_module(module, name, submodule):
    wrappers = _watched.get(module)
    if not wrappers:
        return
    children = module._modules  # (a scripted module's is a wrapper without .get)
    old = children[name] if name in children else None
    if submodule is old:
        return
    replacing = old is not None and has_state(old)  # (its tensors stay mirrored, unused)
    if replacing or has_state(submodule):
        _note(module, "submodule", name, submodule, replacing)
    else:
        for m in submodule.modules():
            _watched.setdefault(m, weakref.WeakSet()).update(wrappers)


_TABLES = {"parameter": "_parameters", "buffer": "_buffers", "submodule": "_modules"}


def refuse_added_state(wrapper):
    """Raise ``RuntimeError`` naming the state that came into ``wrapper``'s torch module since it
    was wrapped (the wrapper's calls ask when ``wrapper._added.items`` holds notes). Forgotten:
    what torch refused, what is gone again or left the tree, and a buffer that turned out
    non-persistent."""
    paths = {id(m): path for path, m in wrapper.torch_module.named_modules()}
    added = []
    for note in wrapper._added.items:
        m, kind, name, value = note
        table = getattr(m, _TABLES[kind])
        if id(m) in paths and name in table and table[name] is value and not (
                kind == "buffer" and name in getattr(m, "_non_persistent_buffers_set", ())):
            added.append(note)
    wrapper._added.items = added
    if not added:
        return
    named = [f"{kind} {_join(paths[id(m)], name)!r}" for m, kind, name, _ in added]
    raise RuntimeError(
        f"PyTorchModule: the torch module gained {', '.join(named)} after it was wrapped; "
        "megengine's optimizers, GradManagers and state_dict only know what was there when it "
        "was wrapped, so this would never be trained or saved. Create parameters, buffers and "
        "submodules before wrapping (run one forward pass in torch first for a module that "
        "creates them in forward), then wrap the module again"
    )


def settle_rebound(wrapper):
    """After a forward of ``wrapper``'s torch module that rebound mirrored buffers or parameters
    (noted in ``wrapper._rebound.items``), put the shared tensors back under their names, so the
    torch module stays whole and usable. A buffer's new value is copied into the shared tensor
    first; one of another shape, dtype or device cannot live in the shared memory, and a new
    parameter would never be trained (megengine's optimizers hold the shared one): the old
    tensor is kept and ``RuntimeError`` says what to do. Notes about tensors that are shared
    again by now (a ``functional_call`` swaps tensors and swaps them back) are dropped."""
    noted, wrapper._rebound.items = wrapper._rebound.items, []
    addresses = {(id(m), name): address for m, name, address in wrapper._shared.items}
    refused, parameters = [], []
    for module, name, old in noted:
        table = module._parameters if name in module._parameters else module._buffers
        new = table.get(name)
        if addresses.get((id(module), name)) != old.data_ptr() or new is None or new is old:
            continue
        if isinstance(old, torch.nn.Parameter):
            # (even on the same memory, nn.Parameter(self.w.data): torch's graph leads to the
            # new tensor, and the gradient of the one megengine trains would be missing)
            parameters.append((module, name))
        elif new.shape != old.shape or new.dtype != old.dtype or new.device != old.device:
            refused.append((module, name, old, new))
        elif new.data_ptr() != old.data_ptr():
            with torch.no_grad():
                # (a view of the old memory, ``self.buf.t()``, is read whole before the write)
                overlaps = new.untyped_storage().data_ptr() == old.untyped_storage().data_ptr()
                old.copy_(new.clone() if overlaps else new)
        table[name] = old
    if not (parameters or refused):
        return
    paths = {id(m): path for path, m in wrapper.torch_module.named_modules()}
    if parameters:
        named = ", ".join(repr(_join(paths.get(id(m), "?"), name)) for m, name in parameters)
        raise RuntimeError(
            f"PyTorchModule: the torch module's parameter(s) {named} were assigned a new "
            "nn.Parameter (self.w = nn.Parameter(...) in forward, or since the last call). "
            "megengine's optimizers and GradManagers hold the parameter that was "
            "there when the module was wrapped (it shares its memory with torch), so the new "
            "one would never be trained, nor the old one reached by a gradient; the old "
            "parameter was kept. To change its value, write it in place (with torch.no_grad(): "
            "self.w.copy_(...)); to compute with a value derived from it, use a plain tensor in "
            "forward (w = self.w * 2)"
        )
    if refused:
        named = "; ".join(
            f"{_join(paths.get(id(m), '?'), name)!r} was {_described(old)}, is now "
            f"{_described(new)}" for m, name, old, new in refused)
        raise RuntimeError(
            f"PyTorchModule: the torch module's forward assigned its buffer(s) new tensors that "
            f"cannot take the shared buffer's place ({named}). megengine shares each buffer's "
            "memory with torch, so a buffer rebound in forward (self.buf = ...) keeps its "
            "shape, dtype and device; the old value was kept. Give the new value the old "
            "buffer's shape, dtype and device, write it in place (self.buf.copy_(...)), or "
            "register the buffer with persistent=False (megengine then neither holds nor "
            "saves it)"
        )


def _described(t):
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}"


def _join(path, name):
    return f"{path}.{name}" if path else name
