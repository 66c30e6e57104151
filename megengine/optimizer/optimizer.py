"""`Optimizer`: parameter groups, per-parameter state, in-place steps, state dicts, the 0.x flow."""
import copy
import functools
import warnings
import numbers
from collections.abc import Iterable

import numpy as np

from ..autodiff import GradManager
from ..core import dispatch
from ..core.fused import use_fused
from ..core.ops import ArgumentError, ArgumentKindError, ArgumentTypeError
from ..core.tensor import Parameter, Tensor, _note_write, check_grad_is_tensor
from ..device import get_array_module
from ..functional import _aten
from ..utils.deprecation import deprecated

__all__ = ["Optimizer"]


def _trace_event(method):
    """Let ``megengine.jit.trace`` record a call of ``method`` as one event that it replays by
    calling the method again (the array updates inside are not ops, so it could not see them)."""

    @functools.wraps(method)
    def announced(*args, **kwargs):
        hook = getattr(dispatch, "_trace_hook", None)  # set by megengine.jit while it traces
        if hook is not None:
            return hook.event(method, *args, **kwargs)
        return method(*args, **kwargs)

    return announced


_legacy_level = []  # the one recording level all optimizers' 0.x GradManagers share


def _record_0x(gm):
    """Start ``gm`` (an optimizer's 0.x GradManager) recording at the level they all share.

    One level, because a GAN has two optimizers whose recordings overlap (the generator's
    records the discriminator's step too): the backward of one hides the others' recording,
    so it stays a plain first-order backward instead of a differentiable one.
    """
    if not _legacy_level:
        _legacy_level.append(dispatch.new_level())
    gm._record(_legacy_level[0])


class _MissingKeyError(TypeError, ValueError, KeyError):
    """A dict without an entry the call needs (a group without 'params', a state dict without
    'param_groups'): what the mistake is, and upstream's KeyError."""

    def __str__(self):  # (KeyError's would quote the message)
        return str(self.args[0])


class Optimizer:
    """Base class of all optimizers (upstream's API).

    ``params``: a Parameter, an iterable of Parameters, or an iterable of dicts (parameter
    groups), each with a ``"params"`` entry and optional hyperparameters that override
    ``defaults``. ``param_groups`` may be edited between steps (learning-rate schedulers do).

    Subclasses implement ``_update(param, grad, state, group)`` on raw arrays: it writes the new
    value into ``param._data`` in place (the storage is shared, e.g. with torch through the
    PyTorch bridge, so it must never be rebound) and keeps its buffers in the ``state`` dict.
    (A step while a recorded op may hold a parameter's array, before ``gm.backward``, first
    moves the parameter to a copy: ``Tensor._before_recorded_write``.)
    Working on raw arrays also keeps the updates out of autodiff. A complex parameter is
    updated as torch's optimizers update one (``view_as_real``): ``_update`` gets it as a float
    parameter of shape ``(..., 2)`` holding its real and imaginary parts (see `_update_as_real`).

    1.x flow: ``with gm: loss = f(); gm.backward(loss)`` then ``opt.step().clear_grad()``.
    0.x flow: ``opt.zero_grad()``; forward; ``opt.backward(loss)``; ``opt.step()``. For it the
    optimizer owns a GradManager, created on the first ``zero_grad()`` and attached to its
    parameters; ``zero_grad()`` starts it recording and ``backward`` runs it and records on, so
    that further forwards and ``backward`` calls before ``step()`` add their gradients up, as
    0.x's did (MAML sums one ``backward`` per task); ``step()`` stops the recording. Code that
    only calls ``clear_grad`` never creates it, so nothing is recorded.
    """

    def __init__(self, params, defaults: dict):
        self._defaults = defaults
        self._state = {}  # Parameter -> {buffer name: Tensor, or a number such as "step"}
        self._gm = None  # the 0.x GradManager, made by zero_grad()
        # 0.x order (forward, zero_grad, backward) seen: record from each step() on (see backward)
        self._record_ahead = False
        self.param_groups = []
        if isinstance(params, (Parameter, dict)):
            params = [params]
        elif not isinstance(params, Iterable) or isinstance(params, (Tensor, str)):
            raise TypeError(
                f"{type(self).__name__}: params must be a Parameter, an iterable of Parameters "
                f"or an iterable of dicts (parameter groups), got {type(params).__name__}"
            )
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)
        if type(self)._create_state is not Optimizer._create_state:  # upstream's protocol
            for group in self.param_groups:
                self._create_state(group)

    # ----- upstream's protocol for optimizers written outside the engine -----
    # A subclass written for upstream (a Lion, a LARS from a program) defines
    # ``_create_state(group)``, which calls ``_add_state``, and ``_updates(group)``, which
    # updates the group's parameters with tensor operations (``param[...] = ...``); `step`
    # calls it instead of the per-parameter ``_update`` of the engine's own optimizers.
    def _create_state(self, param_group):
        """Upstream's hook to make a group's state when the optimizer is built; the engine's
        optimizers make theirs on the first update instead."""

    def _add_state(self, param, state_name, initializer=None):
        """A state tensor for ``param`` (zeros shaped like it, or ``initializer``), as
        upstream's: ``self._state[param][state_name]``. Upstream's zeros are float32; those of a
        complex parameter are complex (its updates would not fit in float32)."""
        state = self._state.setdefault(param, {})
        if state_name in state:
            raise ValueError(f"{type(self).__name__}._add_state: the state {state_name!r} of "
                             "this parameter exists already")
        if initializer is None:
            initializer = np.zeros(param.shape, dtype=param.dtype if param.dtype.kind == "c"
                                   else np.float32)
        state[state_name] = Tensor(initializer, device=param.device)

    def _updates(self, param_group):
        raise NotImplementedError(f"{type(self).__name__}: implement _update(param, grad, "
                                  "state, group) or upstream's _updates(param_group)")

    def _run_updates(self):
        # a recording GradManager (a step inside `with gm`, the 0.x flow that records on after
        # backward) must not see the updates, as upstream turns off its computing-path
        # recording during step(); with recording off, `param[...] = v` also writes into the
        # parameter's storage, so it stays the leaf the GradManager attached
        hidden = dispatch.suspend_from(0)
        recording = dispatch._recording
        dispatch._set_recording(-recording)
        try:
            for group in self.param_groups:
                self._updates(group)
        finally:
            dispatch._set_recording(recording)
            dispatch.resume(hidden)

    def add_param_group(self, param_group: dict):
        """Add a group of parameters with its own hyperparameters (missing ones from defaults)."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            error = ArgumentKindError if not isinstance(param_group, dict) else _MissingKeyError
            raise error(
                "add_param_group: expected a dict with a 'params' entry, got "
                f"{type(param_group).__name__}"
                + ("" if not isinstance(param_group, dict) else f" with {sorted(param_group)}")
            )
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, set):
            raise TypeError("add_param_group: give parameters as a list, not a set: a set's "
                            "order changes between runs, and state dicts rely on the order")
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__} can only optimize Parameters, got "
                    f"{type(p).__name__}"
                )
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or seen & {id(p) for p in params}:
            # (an ArgumentError: upstream asserts)
            raise ArgumentError("add_param_group: some parameters appear more than once")
        group["params"] = params
        for name, default in self._defaults.items():
            group.setdefault(name, default)
        self._check_group(group)
        self.param_groups.append(group)

    #: the buffers an engine optimizer keeps per parameter, and whether it counts steps
    _state_buffers = ()
    _counts_steps = False

    @property
    def _state_names(self):
        return (*self._state_buffers, "step") if self._counts_steps else self._state_buffers

    def _fresh_state(self, param, group, names):
        """The state ``param`` starts from under ``names`` (of `_state_names`: zero buffers, step
        0), as host arrays. An engine optimizer makes it at the parameter's first update;
        ``state_dict()`` lists it for a parameter not updated yet, since upstream's optimizers
        make it when the parameter joins and upstream's ``load_state_dict`` needs every
        parameter's state."""
        if type(self)._updates is not Optimizer._updates:  # upstream's protocol: its own state
            return {}
        return {name: 0 if name == "step" else np.zeros(param.shape, param.dtype)
                for name in names}

    def _check_group(self, group):
        """Reject hyperparameters that make no sense; subclasses add their own checks."""
        for name in ("lr", "weight_decay", "eps"):
            if name in group:
                _check_non_negative(group[name], name)

    # ----- the step -----
    @_trace_event
    def step(self):
        """Update each parameter that has a gradient; returns self (``opt.step().clear_grad()``)."""
        # CuPy allocates (state buffers) and launches kernels on its current device: with several
        # GPUs each parameter's device is made current for its update (None: one GPU or CPU,
        # where the current device is always the right one)
        self._check_grads()
        _note_write()  # parameters change in place (megengine.jit's captures)
        if dispatch.holds_arrays():
            # a step before backward (or within an outer GradManager): upstream's update gives
            # each parameter a new value, so what the recorded ops saved stays as it was
            for p in self._params():
                if p.grad is not None:
                    p._before_recorded_write()
        scope = dispatch.device_scope()
        states, update = self._state, self._update
        groups = self.param_groups
        if type(self)._updates is not Optimizer._updates:  # upstream's protocol (above)
            self._run_updates()
            groups = ()
        batched = type(self)._update_batch is not Optimizer._update_batch
        host = type(self)._update_host is not Optimizer._update_host
        try:
            for group in groups:
                group = _read_tensors(group)
                batches = None  # (device, dtype) -> [(param, grad, state)] for _update_batch
                on_host = []  # [(param, grad, state)] for _update_host
                for p in group["params"]:
                    g = p.grad
                    if g is None:
                        continue
                    grad = g._data
                    if scope is not None:
                        scope.enter(p._device)
                    if not p._pinned_storage:
                        if p._shared():  # an alias keeps the old value
                            p._unshare()
                    elif dispatch._pinned_roots.get(id(p._data)):  # torch's memory stays;
                        dispatch.keep_values_of_views(p._data)  # megengine views of it keep theirs
                    state = states.get(p)
                    if state is None:
                        state = states[p] = {}
                    if batched and _batchable(p._data, grad):
                        if batches is None:
                            batches = {}
                        batches.setdefault((p._device, grad.dtype), []).append((p, grad, state))
                    elif host and type(grad) is np.ndarray and grad.dtype.kind == "f":
                        on_host.append((p, grad, state))
                    elif grad.dtype.kind == "c":
                        _update_as_real(update, p, grad, state, group)
                    else:
                        update(p, grad, state, group)
                if on_host:
                    self._update_host(on_host, group)
                if batches:
                    for (device, _), items in batches.items():
                        if scope is not None:
                            scope.enter(device)
                        self._update_batch(items, group)
        finally:
            if scope is not None:
                scope.close()
        views = self.__dict__.get("_views")  # (made by the first multi-tensor update)
        if views is not None:
            views.done()
        if self._gm is not None and self._gm._recording:
            # zero_grad() was used as a synonym of clear_grad() next to the user's own
            # GradManager (a PyTorch habit): stop the recording it started, which no
            # backward() of ours will end
            self._gm.release()
        if self._record_ahead and self._gm is not None:
            # a 0.x program that runs its forward before zero_grad(): the next forward must
            # already be recorded when its backward(loss) comes
            self._gm.attach(self._params())
            _record_0x(self._gm)
        return self

    def _check_grads(self):
        """Refuse a step that could not update every parameter with a gradient (a ``.grad``
        that is not a Tensor of its parameter's shape, a complex one for a real parameter, an
        integer parameter) before any is updated, so that a failed step changes nothing (torch
        refuses such a ``.grad`` when it is set; upstream 1.13 measured: the parameters before
        the bad one were updated when the step raised)."""
        for i, p in enumerate(self._params()):
            g = p.grad
            if g is None:
                continue
            if not isinstance(g, Tensor):
                check_grad_is_tensor(p, f"{type(self).__name__}.step", "nothing was updated",
                                     owner=f"parameter {i}'s")
            if g._data.shape != p._data.shape:
                raise ValueError(
                    f"{type(self).__name__}.step: gradient of shape {g.shape} for parameter {i} "
                    f"of shape {p.shape}; nothing was updated (set its .grad to a Tensor of "
                    "the parameter's shape, or None to skip it)"
                )
            if g._device != p._device and "gpu" in g._device + p._device:
                # (a GPU's kernels read the memory of their own device only: the update of a
                # parameter from another device's gradient failed midway, with CuPy's or
                # torch's words; host memory is one, so cpu devices mix)
                raise ValueError(
                    f"{type(self).__name__}.step: the gradient of parameter {i} is on "
                    f"{g._device}, the parameter on {p._device}; nothing was updated (move the "
                    f"gradient: p.grad = p.grad.to(p.device))"
                )
            if p._data.dtype.kind not in "fc":  # (upstream 1.13 measured: failed midway too)
                raise TypeError(
                    f"{type(self).__name__}.step: parameter {i} is of dtype {p.dtype}, which an "
                    "update cannot write, and has a gradient; nothing was updated (make it a "
                    "float Parameter, or set its .grad to None)"
                )
            if g._data.dtype.kind == "c" and p._data.dtype.kind != "c":  # (torch refuses it)
                raise TypeError(
                    f"{type(self).__name__}.step: a complex gradient ({g.dtype}) for parameter "
                    f"{i} of dtype {p.dtype}; nothing was updated (give it a real gradient: "
                    "F.real of it, or make the parameter complex)"
                )

    def _update(self, param, grad, state, group):
        raise NotImplementedError(f"{type(self).__name__}._update")

    def _update_batch(self, items, group):
        """`_update` of several CUDA parameters of one device and dtype at once, ``items`` a
        list of ``(param, grad, state)`` (C-contiguous CuPy arrays, see `_batchable`), on a GPU
        where each kernel launch costs host time. A subclass that overrides it (`step` batches
        only then) updates them with a multi-tensor kernel, and calls this where it cannot:
        one `_update` each."""
        for param, grad, state in items:
            self._update(param, grad, state, group)

    def _update_host(self, items, group):
        """`_update` of the group's numpy parameters of a float dtype, ``items`` a list of
        ``(param, grad, state)``. A subclass that overrides it (`step` collects them only then)
        updates them in one call, and calls this where it cannot: one `_update` each."""
        for param, grad, state in items:
            self._update(param, grad, state, group)

    def _torch_views(self):
        """This optimizer's `TorchViews` (for `_update_batch`), made on first use."""
        views = self.__dict__.get("_views")
        if views is None:
            views = self._views = TorchViews()
        return views

    @staticmethod
    def _buffer(state, name, param):
        """The array of state buffer ``name`` of ``param``, made as zeros on first use.

        The state holds each buffer as a Tensor, as upstream's does (programs read
        ``opt._state[param]["momentum_buffer"].numpy()``); updates work in place on the array
        inside, so the Tensor always shows the current value.
        """
        buf = state.get(name)
        if buf is None:
            buf = state[name] = Tensor._wrap(
                get_array_module(param._device).zeros_like(param._data), param._device)
        return buf._data

    # ----- gradients -----
    @_trace_event
    def clear_grad(self):
        """Set every parameter's ``.grad`` to None (the 1.x way to start a step)."""
        for p in self._params():
            p.grad = None

    @deprecated(version="1.0", reason="use clear_grad instead")  # (outermost: the warning
    @_trace_event  # points at the caller's line)
    def zero_grad(self):
        """0.x: zero the gradients and start recording the forward pass for ``backward``.

        Existing gradients are zeroed in place, as upstream's (deprecated) ``zero_grad``.
        The optimizer's own GradManager, attached to its parameters, starts recording if it
        is not already; ``backward(loss)`` then computes the gradients. Each call warns a
        ``DeprecationWarning`` with upstream's text, as upstream 1.x does.
        """
        _note_write()  # gradients are zeroed in place (megengine.jit's captures)
        for p in self._params():
            g = p.grad
            # CuPy arrays have no `writeable` flag: they are always writable
            if g is None:
                continue
            with dispatch.on_device(p._device):  # CuPy writes/allocates on the current GPU
                if not getattr(g._data.flags, "writeable", True):
                    p.grad = Tensor._wrap(get_array_module(p._device).zeros_like(g._data),
                                          p._device)
                elif g._aliased():  # a view, its source or a detached alias keeps its value
                    g._data = get_array_module(p._device).zeros_like(g._data)
                else:
                    g._data[...] = 0
        if self._gm is None:
            self._gm = GradManager()
        self._gm.attach(self._params())  # also catches groups added since the last call
        if not self._gm._recording:
            _record_0x(self._gm)

    @_trace_event  # replayed whole: whether the loss was recorded is decided on each call
    def backward(self, loss):
        """0.x: accumulate d(loss)/d(param) into each ``param.grad``; call ``zero_grad()`` first.

        As 0.x's (``add_update(param.grad, grad)``), each call adds to the gradients: several
        losses backpropagated between ``zero_grad()`` and ``step()`` sum up. Recording goes on
        after the call for that, until ``step()``."""
        if self._gm is None or not self._gm._recording:
            raise RuntimeError(
                f"{type(self).__name__}.backward: nothing was recorded; call "
                "optimizer.zero_grad() before the forward pass (or use a GradManager)"
            )
        node = getattr(loss, "_node", None)
        if node is None or self._gm._key not in node[0].keys:
            # 0.x differentiated a static graph, so a forward that ran before zero_grad()
            # (MegEngine/Models' GAN steps: forward, zero_grad, backward, step) still had
            # gradients. Here nothing recorded it: this step cannot update, and a silent
            # step without gradients would be worse than saying so. From now on each step()
            # starts the recording, so the next forward is recorded and later steps train.
            self._gm.release()
            self._record_ahead = True
            warnings.warn(
                f"{type(self).__name__}.backward: the loss was not recorded (it was computed "
                "before optimizer.zero_grad(), or does not depend on the optimizer's "
                "parameters), so this step has no gradients; from now on each step() starts "
                "recording the next forward. Call zero_grad() before the forward pass (or use "
                "a GradManager) to train from the first step.", RuntimeWarning, stacklevel=2)
            return
        self._gm.backward(loss)
        # 0.x's graph was static: a later forward and backward before step() (MAML: one per
        # task) also had gradients, added up. The GradManager released its recording, so the
        # next one starts now; step() ends it.
        _record_0x(self._gm)

    def record(self):
        """Upstream 1.0's pre-release spelling of the 0.x flow, a context manager:
        ``opt.zero_grad(); with opt.record(): loss = net(x); opt.backward(loss)``; then
        ``opt.step()``. It records the forward for ``backward`` as ``zero_grad()`` does (without
        touching existing gradients) and stops a recording no ``backward`` consumed at exit."""
        import contextlib

        @contextlib.contextmanager
        def recording():
            if getattr(self, "_in_record", False):
                raise RuntimeError(f"{type(self).__name__}.record(): already recording; "
                                   "do not nest record() blocks of one optimizer")
            if self._gm is None:
                self._gm = GradManager()
            self._gm.attach(self._params())
            if not self._gm._recording:
                _record_0x(self._gm)
            self._in_record = True
            try:
                yield
            finally:
                self._in_record = False
                if self._gm._recording:
                    self._gm.release()

        return recording()

    def __del__(self):
        # an optimizer recording ahead or on after backward (see backward) stops when it goes
        # away: its recording is global state of the dispatcher and must not outlive it
        gm = getattr(self, "_gm", None)
        if gm is not None and gm._recording and dispatch._trace_hook is None:
            gm.release()

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    # ----- state dicts -----
    def state_dict(self, keep_var=False) -> dict:
        """The optimizer's state: hyperparameters per group and buffers per parameter.

        Parameters are numbered in group order; buffers are host numpy arrays (copies), so the
        result pickles with ``megengine.save`` and later steps do not change it. As in
        upstream's, every parameter has its state (a parameter not updated yet: the zeros it
        starts from) and a step count is a float32 0-d array, so upstream's
        ``load_state_dict`` reads the result. ``keep_var=True`` gives the state's Tensors
        themselves instead, as upstream's.
        """
        index = {id(p): i for i, p in enumerate(self._params())}
        groups = []
        for group in self.param_groups:
            g = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            g["params"] = [index[id(p)] for p in group["params"]]
            groups.append(g)
        export = _as_tensor if keep_var else _to_host
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                st = self._state.get(p, {})
                names = self._state_names
                missing = [name for name in names if name not in st]
                if missing:  # a parameter not updated yet: the state it starts from
                    st = {**self._fresh_state(p, group, missing), **st}
                # the names in their order (Adagrad's update adds "step" first), then any others
                st = {**{name: st[name] for name in names if name in st}, **st}
                if st:
                    state[index[id(p)]] = {k: export(_step_as_saved(v) if k == "step" else v)
                                           for k, v in st.items()}
        return {"param_groups": groups, "state": state}

    def load_state_dict(self, state: dict):
        """Restore what ``state_dict`` returned (the parameters must be in the same order).

        Everything is checked before anything changes: when it raises, the optimizer's groups
        and state are as they were."""
        if not isinstance(state, dict) or set(state) != {"param_groups", "state"} \
                or not isinstance(state["param_groups"], (list, tuple)) \
                or not isinstance(state["state"], dict):
            # (also upstream's TypeError for a non-dict, KeyError for a missing entry)
            error = (ArgumentTypeError if not isinstance(state, dict) else
                     _MissingKeyError if not {"param_groups", "state"} <= set(state) else
                     ValueError)
            raise error(
                "load_state_dict: expected a dict with 'param_groups' and 'state' as made by "
                "Optimizer.state_dict()"
            )
        saved_groups = state["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"load_state_dict: the state has {len(saved_groups)} parameter groups, this "
                f"optimizer has {len(self.param_groups)}"
            )
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(
                    f"load_state_dict: parameter group {i} of the state is not a dict with a "
                    "'params' entry; pass what Optimizer.state_dict() returned"
                )
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"load_state_dict: parameter group {i} has {len(saved['params'])} "
                    f"parameters in the state, {len(group['params'])} here"
                )
            missing = [k for k in self._defaults if k not in saved]
            if missing:  # (extra keys, such as a scheduler's "initial_lr", are kept)
                raise ValueError(
                    f"load_state_dict: parameter group {i} of the state lacks {missing}, which "
                    f"{type(self).__name__} needs: is it the state of another optimizer?"
                )
        engine = type(self)._updates is Optimizer._updates
        new_state = {}
        for group, saved in zip(self.param_groups, saved_groups):
            for p, idx in zip(group["params"], saved["params"]):
                st = state["state"].get(idx)
                if st is None:
                    continue
                if not isinstance(st, dict):
                    raise ValueError(
                        f"load_state_dict: the state of parameter {idx} is a "
                        f"{type(st).__name__}, expected a dict of buffer name -> array"
                    )
                try:
                    new_state[p] = {k: _saved_step(v) if k == "step" and engine
                                    else _to_device(v, p, k) for k, v in st.items()}
                except _NotNumbers as e:
                    raise ValueError(f"load_state_dict: the state of parameter {idx} cannot "
                                     f"be loaded: {e}") from None
        # every group is checked before any changes (torch's load_state_dict changes nothing
        # when it raises; upstream 1.13 measured: the groups before a bad one were updated)
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            new_group = {**group, **{k: copy.deepcopy(v) for k, v in saved.items()
                                     if k != "params"}}
            self._check_group(new_group)
            new_groups.append(new_group)
        for group, new_group in zip(self.param_groups, new_groups):
            group.update(new_group)  # in place: schedulers hold the group dicts
        self._state = new_state
        # a schedule's lrs came with the state: the next scheduler built over this optimizer
        # knows them from ones an earlier scheduler left (`LRScheduler._keep_loaded_lrs`)
        self._schedule_loaded = all("initial_lr" in saved for saved in saved_groups)


def _update_as_real(update, param, grad, state, group):
    """``update`` of a complex parameter as torch's optimizers do it (``view_as_real``): on its
    real and imaginary parts, a float parameter of shape ``(..., 2)`` that shares its memory,
    so every optimizer treats it as twice as many real numbers (SGD's update is the complex
    one; Adam's second moment is taken per part, not of ``|g|**2``). State buffers stay
    complex views of what the update keeps, as torch's state does."""
    data = param._data
    if not data.flags.c_contiguous:
        raise ValueError(
            f"{type(update.__self__).__name__}.step: a complex parameter must be C-contiguous "
            f"to be updated as pairs of reals (shape {param.shape}, strides {data.strides}); "
            "make it contiguous before building the optimizer")
    device = param._device
    as_param = Tensor._wrap(_as_real(data), device)
    real_state = {k: Tensor._wrap(_as_real(v._data), device)
                  if isinstance(v, Tensor) and v._data.dtype.kind == "c" else v
                  for k, v in state.items()}
    xp = get_array_module(device)
    if not grad.flags.c_contiguous:  # (ascontiguousarray would make a 0-d grad 1-d)
        grad = xp.ascontiguousarray(grad)
    update(as_param, _as_real(grad), real_state, group)
    for k, v in real_state.items():
        if isinstance(v, Tensor) and v._data.shape == as_param._data.shape \
                and v._data.dtype == as_param._data.dtype:
            v = Tensor._wrap(v._data.view(data.dtype).reshape(data.shape), device)
        state[k] = v


def _as_real(a):
    """A C-contiguous complex array's real and imaginary parts, as a float view of shape
    ``a.shape + (2,)`` (torch's ``view_as_real``)."""
    return a.reshape(a.shape + (1,)).view(a.real.dtype)


# On a GPU each optimizer's update is one CuPy ElementwiseKernel per parameter, defined next to
# its numpy code in the optimizer's own file (megengine/core/fused.py builds them).


# Parameters from this many elements update on ATen on the CPU (float32/float64; family "update"
# in `functional._aten`): SGD's. Measured, SGD with momentum over every parameter of bench_models'
# networks, numpy's passes against ATen's for those from 65536 elements: ResNet-18 (11.7M
# values) 16.9 ms against 13.8 with one thread (numpy's ``lr * v`` is a temporary), 13.3 against
# 7.4 with two; ShuffleNetV2 (2.3M in 169 parameters) 3.3 against 3.5 with one, 4.5 against 3.2
# with two. Smaller parameters stay on numpy: a view and an ATen call cost more than the pass.
# The updates of many passes (Adam's, Adagrad's, Adadelta's) have a rule of their own below.
_ATEN_UPDATE_MIN = 65536


def _batchable(data, grad):
    """Whether CUDA parameter ``data`` with gradient ``grad`` may join a multi-tensor update
    (`Optimizer._update_batch`): CuPy arrays of one float32/float64 dtype, C-contiguous (the
    multi-tensor kernels walk each tensor's memory as one flat run), on a GPU whose torch has
    CUDA (the kernels are ATen's). Empty ones have nothing to update, and no memory to view."""
    return type(data) is not np.ndarray and use_fused(data, grad) and data.size > 0 \
        and data.flags.c_contiguous \
        and grad.flags.c_contiguous and _aten.use_aten(data, "update")


class TorchViews:
    """torch views of the CUDA arrays an optimizer updates in place step after step (its
    parameters and state buffers), made once (`functional._aten.memory_view`, a few
    microseconds of host time each) and reused while the array's pointer, shape, strides and
    dtype are the same. A kept view holds the array's memory, not the array, so it is no
    alias that a write must spare (`Tensor._shared`); numpy arrays have no such memory
    object, so their views are made anew each time. Streams: each step's gradients get fresh
    views (`_aten.view`), which order torch's stream after CuPy's, and so after every write
    queued before into a kept array. Call `done` at the end of each step: the views of arrays
    that step did not ask for (a parameter given a new array, one left out) go then."""

    __slots__ = ("_kept", "_used")

    def __init__(self):
        self._kept, self._used = {}, {}

    def __call__(self, a):
        if type(a) is np.ndarray:  # (a view of numpy memory holds the array: made anew)
            return _aten.view(a)
        key, where = id(a), (a.data.ptr, a.shape, a.strides, a.dtype)
        hit = self._used.get(key) or self._kept.get(key)
        if hit is None or hit[0] != where:
            hit = (where, _aten.memory_view(a))
        self._used[key] = hit
        return hit[1]

    def done(self):
        self._kept, self._used = self._used, {}

    def __reduce__(self):  # copied or pickled with its optimizer: empty (views are made anew)
        return TorchViews, ()


def update_on_aten(data, grad):
    """Whether the update of numpy parameter ``data`` runs as ATen's ops on torch views of the
    arrays (torch's thread pool) rather than numpy's passes (see above). C-contiguous storage
    only: ops in place on a view must reach the array's own memory."""
    return type(data) is np.ndarray and data.size >= _ATEN_UPDATE_MIN \
        and data.dtype is grad.dtype and data.dtype in dispatch.KERNEL_FLOATS \
        and data.flags.c_contiguous and _aten.use_aten(data, "update")


# The updates of many passes (Adam's and AdamW's fourteen, Adagrad's seven, Adadelta's sixteen)
# take ATen's ops from this many elements, and only while torch's pool has more than one thread:
# numpy's passes, each split over the threads. Measured at two threads (the best of interleaved
# runs, nothing else running), numpy's passes against ATen's: Adam of one parameter of 65536
# elements 0.10 ms against 0.17 (a view and an ATen call per pass cost more than the threads
# save), 262144 0.38 against 0.39, 524288 1.10 against 0.83, (1024, 1024) 2.5 against 1.7;
# Adam's step over a small transformer's 73 parameters (d=512, 6 layers, 23.0M values) 65.7 ms
# against 51.9, AdamW's 71.2 against 60.8; Adagrad of 524288 elements 0.74 against 0.51, 4M 17.3
# against 6.7; Adadelta 1.39 against 1.04, 26.0 against 14.1. With one thread ATen's ops are no
# faster up to 1M elements ((1024, 1024): Adam 2.7 ms against 2.6, Adagrad 2.2 against 2.1).
# LAMB's fourteen and two float64 norms, at two threads with other work on the machine (best of
# 15-60): four (1024, 1024) parameters 19.7 ms against 15.7, ResNet-18's 62 parameters (seven
# from 2**19 values) 82.1 against 69.6. While other processes keep the cores busy, each ATen
# op waits for its second thread (about 10 ms): ResNet-18's LAMB step 127 ms against 1070
# (medians), Adam's 295 against 1520.
_ATEN_PASSES_MIN = 1 << 19


def passes_on_aten(data, grad, group):
    """Whether an update of many passes (Adam's, Adagrad's, Adadelta's, LAMB's) over numpy
    parameter ``data`` runs as ATen's ops on torch views of the arrays: a large parameter that
    `update_on_aten` accepts, while torch's pool has several threads (with one, numpy's passes
    are as fast and need no view per operand). The ATen code does numpy's operations one by one
    in the same order, into scratch arrays from numpy (``np.empty_like``), and leaves the square
    roots to numpy: the same results bit for bit. So ``group``'s hyperparameters must be Python
    numbers: numpy computes with a numpy float64 one in float64 (NEP 50), ATen in the array's
    dtype.

    Scratch and square roots from numpy, not torch: a block fresh from the system faults its
    pages in one by one under torch's allocator, in huge pages under numpy's (4M float32
    values: a process's first ``torch.ones`` 10.4 ms, ``np.ones`` 0.75); torch's CPU ``sqrt``
    is not correctly rounded (1 ulp off for about one float32 value in six, one float64 value
    in eighty)."""
    return data.size >= _ATEN_PASSES_MIN and update_on_aten(data, grad) \
        and _aten.get_num_threads() > 1 and not any(
            isinstance(v, np.generic) or isinstance(v, (tuple, list))
            and any(isinstance(b, np.generic) for b in v)
            for k, v in group.items() if k != "params")


def _check_non_negative(value, name):
    value = _number(value, name)
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value < 0:
        raise ArgumentError(f"invalid {name}: {value}; it must be >= 0")


def _number(value, name):
    """A hyperparameter given as a Tensor of one value (upstream's optimizers compute with a
    Tensor ``lr``, ``mge.tensor(0.1)``) as a Python float; any other value as it is."""
    if not isinstance(value, Tensor):
        return value
    if value.size != 1 or value.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a number or a Tensor of one real value, got a Tensor "
                        f"of shape {value.shape} and dtype {value.dtype}")
    return float(value.item())


def _read_tensors(group):
    """``group`` with its hyperparameters given as Tensors read as Python floats (`_number`:
    the updates compute with numbers), or ``group`` itself when it holds none; read at each
    step, so a Tensor set into ``param_groups`` later counts too."""
    tensors = [k for k, v in group.items() if k != "params" and isinstance(v, Tensor)]
    if not tensors:
        return group
    return dict(group, **{k: _number(group[k], k) for k in tensors})


def _to_host(value):
    if isinstance(value, Tensor):
        return value.numpy()
    if type(value).__module__.startswith("cupy"):
        return value.get()
    if isinstance(value, np.ndarray):
        return value.copy()
    return copy.deepcopy(value)


def _as_tensor(value):
    return value if isinstance(value, Tensor) else Tensor(_to_host(value))


def _step_as_saved(value):
    """An engine optimizer's step count (an int) as upstream's state dicts hold it."""
    return np.array(value, np.float32) if isinstance(value, int) else value


class _NotNumbers(ValueError):
    """A state entry holds something other than numbers (`load_state_dict` names its owner)."""


def _saved_step(value):
    """An engine optimizer's step count (an int) from a state dict's (upstream's: a float32
    0-d array; an int in earlier versions of this fork)."""
    if isinstance(value, Tensor):
        value = value.numpy()
    try:
        return int(np.asarray(value).item())
    except (TypeError, ValueError) as e:
        raise _NotNumbers(f"its 'step' must be a number, got {value!r} ({e})") from None


def _to_device(value, param, name):
    if isinstance(value, Tensor):
        value = value.numpy()
    if not isinstance(value, np.ndarray):
        return copy.deepcopy(value)
    if value.dtype.kind == "O":  # (numpy's cast would read None as NaN)
        bad = [v for v in value.flat if not isinstance(v, numbers.Number)]
        if bad:
            raise _NotNumbers(f"its {name!r} must hold numbers, got {bad[0]!r} in an array "
                              "of objects")
        value = np.array(value.tolist())
    if value.dtype.kind == "c" and param.dtype.kind != "c":
        # refused (numpy's cast would drop the imaginary part with a ComplexWarning only)
        raise _NotNumbers(f"its {name!r} is complex ({value.dtype}) but its parameter is real "
                          f"({param.dtype}); pass the state of a real parameter")
    if value.shape != param.shape and value.ndim == 0:
        # a scalar state tensor (upstream's protocol: _add_state(p, "step", initializer=0.0))
        return Tensor(value, dtype=value.dtype, device=param.device)
    if value.shape != param.shape:
        raise ValueError(
            f"load_state_dict: state {name!r} has shape {value.shape}, but its parameter has "
            f"shape {param.shape}"
        )
    try:  # (on the host first, so that every device refuses the same values)
        array = np.array(value, dtype=param.dtype)
    except (TypeError, ValueError) as e:
        raise _NotNumbers(f"its {name!r} must hold numbers, got dtype {value.dtype} "
                          f"({e})") from None
    if param._device.startswith("gpu"):
        with get_array_module(param._device).cuda.Device(int(param._device[3:])):
            array = get_array_module(param._device).asarray(array)
    return Tensor._wrap(array, param._device)  # buffers live in the state as Tensors
