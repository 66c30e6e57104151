"""megengine.core._caller: an error raised deep in the engine names the public function the
user's code called and the argument that held the bad value, and only the error path looks."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
from megengine.core import _caller
from megengine.core.ops import ArgumentTypeError


def _error(call):
    with pytest.raises(Exception) as info:
        call()
    return info.value


def test_the_function_called_and_the_argument_holding_the_value_are_named():
    x = mge.tensor(np.ones((1, 3, 4, 4), np.float32))
    # (F.conv2d converts its weight many calls below itself, in Tensor's constructor)
    msg = str(_error(lambda: F.conv2d(x, "w")))
    assert msg.startswith("conv2d: weight: cannot make a tensor from data of dtype <U1")


def test_the_outermost_public_function_is_named_not_the_ones_it_calls():
    x = mge.tensor(np.ones((2, 3), np.float32))
    # F.polar calls F.complex, also public; the user called polar, with angle None
    msg = str(_error(lambda: F.polar(x, None)))
    assert msg.startswith("polar: angle is None"), msg


def test_a_function_made_by_a_factory_is_named_by_its_module():
    x = mge.tensor([1.0, 2.0])
    # (F.add and F.sub share one code object: the closure tells them apart)
    assert str(_error(lambda: F.sub(x, None))).startswith("sub: the operand y is None")
    assert str(_error(lambda: F.exp(None))).startswith("exp: x is None")


def test_an_item_of_a_list_argument_is_named_with_its_index():
    x = mge.tensor([1.0, 2.0])
    assert str(_error(lambda: F.meshgrid(x, None))).startswith("meshgrid: inputs[1] is None")


def test_a_parameter_whose_default_is_none_is_not_taken_for_the_none():
    def f(a, b=None):  # (a module-level function of megengine's API would be found the same)
        return a, b

    import inspect
    frame = inspect.currentframe()
    a, b = None, None  # noqa: F841  (the frame's locals the parameters are read from)
    assert _caller._argument(frame, f, None) == "a"


def test_the_value_held_by_two_arguments_names_neither():
    x = mge.tensor([1.0, 2.0])
    s = "x"
    msg = str(_error(lambda: F.where(x > 0, s, s)))
    assert msg.startswith("where: cannot make a tensor"), msg


def test_code_outside_a_public_function_keeps_the_words_of_the_error():
    x = mge.tensor([1.0, 2.0])
    # an operator of Tensor (a method) and Tensor's constructor: upstream's words, unprefixed
    assert str(_error(lambda: x + None)) == "the operand is None and is not supported."
    assert str(_error(lambda: mge.tensor("x"))).startswith("cannot make a tensor from data")
    assert _caller.public_function() is None  # (called from this test: no megengine frame)


def test_a_string_or_none_for_a_tensor_raises_the_types_upstream_raises():
    # upstream 1.13 raises ValueError (its elementwise functions: "no dtype available"),
    # RuntimeError (x + "x", mge.tensor("x")) or TypeError (F.conv2d, F.add(x, None))
    x = mge.tensor([1.0, 2.0])
    for call in (lambda: F.exp("x"), lambda: F.exp(None), lambda: F.add(x, None),
                 lambda: mge.tensor("x"), lambda: x + "x"):
        e = _error(call)
        assert isinstance(e, ArgumentTypeError)
        assert isinstance(e, (TypeError)) and isinstance(e, ValueError) \
            and isinstance(e, RuntimeError)
