"""Tensor format labels (upstream's ``Tensor.format``): how a label travels from an op's inputs to
its outputs, and the physical NHWC view a ``"nhwc"`` tensor shows with auto conversion off.

Upstream keeps an ``"nhwc"`` tensor's value in NHWC memory order and, with
``megengine.config._auto_format_convert`` on (its default), rewrites every shape query, host
read and layout-sensitive op so that the program sees the NCHW tensor. This engine keeps the
*logical* (NCHW) value instead; the label travels by upstream's rules, so every value, shape and
gradient a program sees is the one the unlabelled tensor gives. Physical order is kept as upstream
makes it: a tensor made with ``Tensor(data, format="nhwc")`` (``data`` is the NCHW value, as
upstream's runtime reads it) or converted by `megengine.amp.convert_tensor_format` stores its
NCHW value as a channels-last view (numpy/CuPy strides), which elementwise ops
preserve and ATen's convolution, pooling and batch norm read without a copy (they then run
their channels-last kernels and return channels-last results).

With auto conversion off, an ``"nhwc"`` tensor shows its physical NHWC array (``shape``,
``numpy()``), and the ops whose upstream rule depends on the switch (transpose, reshape,
broadcast, indexing, elementwise, concat) work on that NHWC array, as upstream's do; the
format-aware ops (convolution, pooling, batch norm, resize, ...) and all other ops still see the
NCHW tensor, as upstream's do.

How an op's outputs are labelled is its class attribute ``format_rule`` (ops without one give
``"default"`` outputs, upstream's rule for the ops it does not list):

- ``"elemwise"``: the inputs' common label (``"default"`` inputs do not count; two different
  labels raise, as upstream asserts), kept only on 4-D/5-D outputs;
- ``"keep"``: every output takes the first input's label (type conversion, copy, dropout,
  convolution, pooling, batch norm, resize);
- ``"reshape"``: an ``"nhwc"`` input gives ``"nhwc"`` when the result is 4-D (else
  ``"default"``; other labels give ``"default"``), reshape and broadcast;
- ``"transpose"``: ``"default"`` (the axes no longer mean N, C, H, W);
- ``"subtensor"``: the first input's label unless the result lost a dim (indexing, split,
  set-subtensor).

An op with ``reads_standard_layout = True`` (a PyTorchModule call) gets the "nhwc" inputs whose
storage is channels-last as C-contiguous arrays: the torch code inside was written for the
tensors torch makes itself (its ``x.view(n, -1)`` fails on channels-last memory), and the layout
is this engine's optimisation, not something the program asked torch for.
"""
from .dispatch import Op, on_device, xp_of
FORMATS = ("default", "nchw", "nhwc")
# logical (NCHW) -> physical (NHWC) axis order and back. A 5-D tensor is a grouped convolution
# weight (G, O/G, I/G, kh, kw): its channel dim is 2, stored innermost (upstream's GIHWO)
TO_NHWC = {4: (0, 2, 3, 1), 5: (0, 1, 3, 4, 2)}
TO_NCHW = {4: (0, 3, 1, 2), 5: (0, 1, 4, 2, 3)}

# upstream's ``_auto_format_convert`` (on by default: "to be easier to use"); read by
# Tensor.shape/numpy and by the dispatcher hook below
auto_convert = True

# rules whose ops see an "nhwc" input's physical array when auto conversion is off
_PHYSICAL_WHEN_OFF = frozenset(("elemwise", "reshape", "transpose", "subtensor"))
_dispatch = None  # megengine.core.dispatch once the hook is installed (it imports this module)


def check_label(value, ndim):
    """``value`` if it is a label a tensor of ``ndim`` dims may carry; raise otherwise."""
    if value not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {value!r}")
    if value == "nhwc" and ndim not in TO_NHWC:
        raise ValueError(f"format 'nhwc' needs a 4-D (N, C, H, W) tensor or a 5-D grouped "
                         f"convolution weight, got {ndim} dims; leave such a tensor 'default'")
    return value


def to_logical(array):
    """The NCHW view of a 4-D/5-D array in NHWC order (no copy)."""
    return array.transpose(TO_NCHW[array.ndim])


def to_physical(array):
    """The NHWC view of a 4-D/5-D NCHW array (no copy)."""
    return array.transpose(TO_NHWC[array.ndim])


def channels_last(array, device):
    """The same 4-D/5-D NCHW value, copied into NHWC memory order and seen in NCHW order: how an
    ``"nhwc"`` tensor is stored (``Tensor(data, format="nhwc")``, `convert_tensor_format`)."""
    with on_device(device):  # the copy is allocated on that GPU
        return to_logical(xp_of(array).ascontiguousarray(to_physical(array)))


def shows_physical(t):
    """Whether ``t`` shows its NHWC array to shape queries and host reads right now."""
    return not auto_convert and t._format == "nhwc"


def labelled():
    """Called whenever a tensor gets a label other than "default": from then on the dispatcher
    labels op outputs. Until then it pays nothing for labels (one global read per op)."""
    global _dispatch
    if _dispatch is None:
        from . import dispatch

        _dispatch = dispatch
        dispatch._format_hook = _apply


def _common_label(inputs):
    label = "default"
    for t in inputs:
        f = t._format
        if f != "default":
            if label != "default" and f != label:
                raise ValueError(f"inputs carry different format labels ({label!r} and {f!r}); "
                                 "give them one label (tensor.format = ...) before combining them")
            label = f
    return label


def _output_label(op, rule, inputs, outputs):
    """The label of ``outputs`` (all outputs of one op share it)."""
    if rule is None or rule == "transpose" or not inputs:
        return "default"
    if rule == "keep":
        return inputs[0]._format
    if rule == "elemwise":
        return _common_label(inputs)
    if rule == "reshape":
        src = inputs[0]._format
        return "nhwc" if src == "nhwc" and auto_convert and outputs[0].ndim == 4 else "default"
    if rule == "subtensor":
        ndim = inputs[0].ndim
        return inputs[0]._format if all(o.ndim == ndim for o in outputs) else "default"
    raise ValueError(f"{type(op).__name__}.format_rule is {rule!r}; expected one of 'elemwise', "
                     "'keep', 'reshape', 'transpose', 'subtensor'")


def _set_label(outs, label):
    for o in outs:
        # an "nhwc" label needs N, C, H, W: an output of another rank (a (C,) statistic, a
        # broadcast into more dims) stays "default"
        if label != "nhwc" or o.ndim in TO_NHWC:
            o._format = label


class StandardLayout(Op):
    """The same value in C order (a copy when the array is not C-contiguous already)."""

    def forward(self, x):
        return xp_of(x).ascontiguousarray(x)

    def backward(self, g):
        return g


def _standard_layout(inputs):
    return tuple([_dispatch.apply(StandardLayout(), t)
                  if t._format == "nhwc" and not t._data.flags.c_contiguous else t
                  for t in inputs])


def _apply(op, inputs):
    """``dispatch._format_hook``: apply ``op`` and label its outputs (see the module doc)."""
    dispatch = _dispatch
    if getattr(op, "reads_standard_layout", False):
        inputs = _standard_layout(inputs)  # before the hook is cleared: those copies are ops
    rule = getattr(op, "format_rule", None)
    if rule is not None:
        for t in inputs:
            if t._format != "default":
                break
        else:
            rule = None  # no input carries a label: every rule gives "default" outputs
    dispatch._format_hook = None  # the op itself (and any op its forward applies) runs plainly
    try:
        if rule is None:  # the common case, kept short: outputs are made "default"
            return dispatch.apply(op, *inputs)
        if not auto_convert and rule in _PHYSICAL_WHEN_OFF \
                and any(t._format == "nhwc" for t in inputs):
            return _apply_physical(op, inputs, rule)
        out = dispatch.apply(op, *inputs)
        outs = out if isinstance(out, tuple) else (out,)
        label = _output_label(op, rule, inputs, outs)
        if label != "default":
            _set_label(outs, label)
        return out
    finally:
        dispatch._format_hook = _apply


def _apply_physical(op, inputs, rule):
    """Auto conversion off: ``op`` runs on the NHWC arrays of "nhwc" inputs, as upstream's
    does; outputs that stay "nhwc" are stored back in NCHW order. The reorderings are ops, so
    gradients flow through them."""
    from .ops import Transpose

    dispatch = _dispatch

    arrays = [dispatch.apply(Transpose(TO_NHWC[t.ndim]), t) if t._format == "nhwc" else t
              for t in inputs]
    out = dispatch.apply(op, *arrays)
    outs = out if isinstance(out, tuple) else (out,)
    if rule == "elemwise":
        label = _common_label(inputs)
    elif rule == "subtensor":
        ndim = inputs[0].ndim
        label = inputs[0]._format if all(o.ndim == ndim for o in outs) else "default"
    else:  # reshape and transpose: upstream's result is an unlabelled tensor
        label = "default"
    if label != "nhwc":
        if label != "default":
            _set_label(outs, label)
        return out
    fixed = []
    for o in outs:
        if o.ndim in TO_NCHW:
            o = dispatch.apply(Transpose(TO_NCHW[o.ndim]), o)
            o._format = "nhwc"
        fixed.append(o)
    return tuple(fixed) if isinstance(out, tuple) else fixed[0]
