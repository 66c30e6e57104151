"""The small megengine.utils modules: deprecation, max_recursion_limit, hook, future,
tuple_function/types and tensor_sanity_check, checked against upstream's documented behaviour."""
import sys
import threading
import warnings

import numpy as np
import pytest

import megengine as mge
import megengine.module as M
from megengine.core import dispatch
from megengine.core.dispatch import Op
from megengine.core.ops import ArgumentError
from megengine.utils import tuple_function
from megengine.utils import types as mtypes
from megengine.utils.deprecation import deprecated, deprecated_func, deprecated_kwargs_default
from megengine.utils.future import Future
from megengine.utils.hook import HookHandler
from megengine.utils.max_recursion_limit import AlternativeRecursionLimit, max_recursion_limit
from megengine.utils.profiler import Profiler
from megengine.utils.tensor_sanity_check import TensorModifiedError, TensorSanityCheck
from megengine.utils.tuple_function import _pair, _pair_nonzero, _triple, get_ndtuple


# ----- deprecation -----
def test_deprecated_function_warns_and_documents():
    @deprecated(version="1.2", reason="use new_add instead")
    def old_add(a, b):
        """Add two numbers."""
        return a + b

    with pytest.warns(DeprecationWarning) as rec:
        assert old_add(1, 2) == 3
    assert str(rec[0].message) == ("Call to deprecated function (or staticmethod) old_add. "
                                   "(use new_add instead) -- Deprecated since version 1.2.")
    assert rec[0].filename == __file__  # the warning points at the caller
    assert old_add.__name__ == "old_add"
    assert "Add two numbers." in old_add.__doc__ and ".. deprecated:: 1.2" in old_add.__doc__


def test_deprecated_methods_are_worded_as_upstreams():
    # upstream 1.13 measured (its decorator on a method m, a classmethod c, a staticmethod s):
    # a.m() and A.m(a) -> "Call to deprecated method m. (use g) -- Deprecated since version
    # 1.2."; A.c() and a.c() -> "... class method c. ..."; A.s() and A.s(a) -> "... function (or
    # staticmethod) s. ..." (earlier versions of this fork said "function (or staticmethod)"
    # for all of them)
    class A:
        @deprecated(version="1.2", reason="use g")
        def m(self):
            return 1

        @classmethod
        @deprecated(version="1.2")
        def c(cls):
            return 2

        @staticmethod
        @deprecated(version="1.2")
        def s(a=None):
            return 3

    a = A()
    cases = [(lambda: a.m(), "method m. (use g)"), (lambda: A.m(a), "method m. (use g)"),
             (lambda: A.c(), "class method c."), (lambda: a.c(), "class method c."),
             (lambda: A.s(), "function (or staticmethod) s."),
             (lambda: A.s(a), "function (or staticmethod) s.")]
    for call, words in cases:
        with pytest.warns(DeprecationWarning) as rec:
            call()
        assert str(rec[0].message) == (f"Call to deprecated {words} -- Deprecated since "
                                       "version 1.2.")


def test_deprecated_class_and_action():
    @deprecated(version="1.0", reason="gone", action="error")
    class Old:
        def __init__(self, x):
            self.x = x

    with pytest.raises(DeprecationWarning, match="deprecated class Old"):
        Old(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Child(Old):
            pass

        assert Child(3).x == 3  # only the deprecated class itself warns


def test_deprecated_func_points_to_the_new_place():
    old_sqrt = deprecated_func("1.3", "megengine.functional", "sqrt", False)
    with pytest.warns(DeprecationWarning, match=r"use megengine.functional.sqrt instead"):
        out = old_sqrt(mge.tensor([4.0]))
    np.testing.assert_allclose(out.numpy(), [2.0])
    quiet = deprecated_func("1.3", "megengine.functional", "sqrt", True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet(mge.tensor([4.0]))


def test_deprecated_kwargs_default():
    @deprecated_kwargs_default("1.5", "mode", 2)
    def f(x, mode="old"):
        return mode

    with pytest.warns(PendingDeprecationWarning, match="default behavior for mode"):
        assert f(1) == "old"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(1, "new") == "new" and f(1, mode="new") == "new"


# ----- max_recursion_limit -----
def test_max_recursion_limit_is_reentrant_and_restores():
    before = sys.getrecursionlimit()
    with max_recursion_limit():
        assert sys.getrecursionlimit() == 2 ** 31 - 1
        with max_recursion_limit():
            pass
        assert sys.getrecursionlimit() == 2 ** 31 - 1  # the inner exit keeps the raise
    assert sys.getrecursionlimit() == before


def test_alternative_recursion_limit_sets_and_restores_both_limits():
    # upstream 1.13 measured: the limit inside, the recursion and stack limits back after
    resource = pytest.importorskip("resource")
    before, stack = sys.getrecursionlimit(), resource.getrlimit(resource.RLIMIT_STACK)
    limit = AlternativeRecursionLimit(before + 1234)
    with limit:
        assert sys.getrecursionlimit() == before + 1234
        with limit:  # a nested entry keeps it, and its exit does not restore yet
            pass
        assert sys.getrecursionlimit() == before + 1234
    assert sys.getrecursionlimit() == before
    assert resource.getrlimit(resource.RLIMIT_STACK) == stack


def test_profiler_names_its_files_by_process(tmp_path):
    # upstream 1.13 measured: "<path>/<pid>.<format>"
    p = Profiler(str(tmp_path))
    assert p.format_path("/x/y", 123, "chrome_timeline.json") == "/x/y/123.chrome_timeline.json"
    assert p.with_backtrace is False and Profiler(str(tmp_path), with_backtrace=True).with_backtrace


# ----- hook -----
def test_hook_handler_is_the_modules():
    net = M.Linear(2, 2)
    calls = []
    handle = net.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    assert isinstance(handle, HookHandler)
    net(mge.tensor(np.ones((1, 2), np.float32)))
    handle.remove()
    net(mge.tensor(np.ones((1, 2), np.float32)))
    assert calls == [(1, 2)]


def test_hook_handler_by_upstreams_keywords():
    # upstream 1.13 measured: HookHandler(source_dict=d, hook=f) puts f into the OrderedDict d
    # under the handler's id, and remove() empties d again
    from collections import OrderedDict

    hooks, hook = OrderedDict(), lambda *args: None
    handle = HookHandler(source_dict=hooks, hook=hook)
    assert list(hooks.items()) == [(handle.id, hook)]
    handle.remove()
    assert hooks == OrderedDict()


# ----- future -----
def test_future_hands_a_value_between_threads():
    fut = Future(ack=True)
    done = []
    producer = threading.Thread(target=lambda: (fut.set(42), done.append(True)))
    producer.start()
    assert fut.get(timeout=5) == 42
    producer.join(5)
    assert done == [True]  # set() returned after get() acknowledged
    quick = Future(ack=False)
    quick.set("x")  # no consumer needed
    assert quick.get() == "x"
    with pytest.raises(TimeoutError):
        Future().get(timeout=0.01)


# ----- tuple_function / types -----
def test_get_ndtuple():
    assert _pair(3) == (3, 3) and _triple((1, 2, 3)) == (1, 2, 3)
    assert get_ndtuple(np.int64(2), n=4) == (2, 2, 2, 2)
    assert _pair([1.0, 0]) == (1, 0)
    with pytest.raises(ArgumentError, match="2 ints"):  # a ValueError and upstream's assert
        _pair((1, 2, 3))
    with pytest.raises(AssertionError, match=">= 1"):  # upstream asserted
        _pair_nonzero((1, 0))
    # upstream 1.13 has _triple_nonzero too: _triple_nonzero(4) == (4, 4, 4)
    assert tuple_function._triple_nonzero(4) == (4, 4, 4)
    with pytest.raises(AssertionError, match=">= 1"):
        tuple_function._triple_nonzero((1, 0, 2))
    assert mtypes._pair is _pair and mtypes.get_ndtuple is get_ndtuple


# ----- tensor_sanity_check -----
class _WritesItsInput(Op):
    def forward(self, a):
        a += 1  # behind the engine's back
        return a * 2


class _Clean(Op):
    def forward(self, a):
        return a * 2


def test_sanity_check_catches_an_op_writing_its_input():
    x = mge.tensor(np.zeros((2, 3), np.float32))
    with TensorSanityCheck() as checker:
        y = dispatch.apply(_Clean(), x)
        z = x + y
        with pytest.raises(TensorModifiedError, match="_WritesItsInput.*input 0"):
            dispatch.apply(_WritesItsInput(), x)
    assert checker.checked_ops == 2
    assert dispatch._profile_hook is None
    np.testing.assert_array_equal(z.numpy(), 0)
    dispatch.apply(_WritesItsInput(), x)  # not checked outside the block


def test_sanity_check_allows_the_engines_own_inplace_updates():
    p = mge.Parameter(np.ones(3, np.float32))
    with TensorSanityCheck():
        p -= 0.5 * p  # an optimizer-style in-place update between ops
        q = p * 2
    np.testing.assert_allclose(q.numpy(), 1.0)


def test_sanity_check_and_profiler_do_not_overlap(tmp_path):
    with Profiler(str(tmp_path)):
        with pytest.raises(RuntimeError, match="one after the other"):
            TensorSanityCheck().enable()
