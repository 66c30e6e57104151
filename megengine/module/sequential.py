"""`Sequential`: a container that feeds its input through its layers in order."""
from collections import OrderedDict

from .module import Module

__all__ = ["Sequential"]


class Sequential(Module):
    """``Sequential(m0, m1, ...)`` names its layers "0", "1", ...;
    ``Sequential(OrderedDict(name=module, ...))`` uses the given names.

    A layer may also be a plain callable such as ``F.relu6`` (upstream calls whatever it
    holds; HarDNet ports put functions in their OrderedDicts): it is called in order but has
    no parameters, state or name in the module tree.

    Supports ``len``, iteration, ``seq[i]``, ``seq[i] = m``, ``del seq[i]`` and slicing
    (``seq[1:]`` is a new Sequential over the same layer objects).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(**kwargs)
        self.layer_keys = []
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            items = list(args[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(args)]
        for key, module in items:
            if not callable(module):
                raise TypeError(f"Sequential: layer {key!r} must be a Module or a callable, "
                                f"got {type(module).__name__}")
            setattr(self, key, module)
            self.layer_keys.append(key)

    @property
    def layer_values(self):
        return [getattr(self, key) for key in self.layer_keys]

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(OrderedDict(zip(self.layer_keys[idx], self.layer_values[idx])))
        return getattr(self, self.layer_keys[idx])

    def __setitem__(self, idx, module):
        if not callable(module):
            raise TypeError(f"Sequential: a layer must be a Module or a callable, got "
                            f"{type(module).__name__}")
        setattr(self, self.layer_keys[idx], module)

    def __delitem__(self, idx):
        keys = self.layer_keys[idx] if isinstance(idx, slice) else [self.layer_keys[idx]]
        for key in keys:
            delattr(self, key)
            self.layer_keys.remove(key)

    def __len__(self):
        return len(self.layer_keys)

    def __iter__(self):
        return iter(self.layer_values)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        self.__dict__.pop("_call_order", None)  # (a layer may have changed: rebuilt at the next call)

    def __delattr__(self, name):
        super().__delattr__(name)
        self.__dict__.pop("_call_order", None)

    def forward(self, inp):
        # the layers in call order, kept from call to call (`layer_values` makes a list of
        # getattr calls each time); any attribute set or deleted drops them
        order = self.__dict__.get("_call_order")
        if order is None or order.keys != self.layer_keys:
            order = self.__dict__["_call_order"] = _CallOrder(self.layer_keys,
                                                              self.layer_values)
        for layer in order.layers:
            inp = layer(inp)
        return inp


class _CallOrder:
    """A Sequential's layers as its last call found them, under the keys they were found by
    (a copy: ``layer_keys`` changed in place is noticed). Not a list or tuple, which Module's
    discovery would look inside; pickles and copies leave it out (`Module.__getstate__`)."""

    __slots__ = ("keys", "layers")

    def __init__(self, keys, layers):
        self.keys, self.layers = list(keys), tuple(layers)
