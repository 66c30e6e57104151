"""The program cache of `trace` (megengine/jit/tracing.py): at most ``max_programs`` programs,
least recently used dropped first, a traced method holds its instances weakly, and so do the
keys the objects given as arguments (value objects key by value)."""
import dataclasses
import gc
import io
import weakref

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager
from megengine.jit import trace
from megengine.jit import tracing


def _counting(**options):
    """A traced ``x * 2 + 1`` and the list of the shapes its Python body ran for: a replay
    (without_host) does not run the body, so the list shows which calls recorded."""
    ran = []

    def fn(x):
        ran.append(tuple(x.shape))
        return x * 2 + 1

    return trace(fn, without_host=True, **options), ran


def _call(f, n):
    x = np.arange(n, dtype="float32")
    out = f(mge.tensor(x))
    np.testing.assert_array_equal(out.numpy(), x * 2 + 1)


def test_the_least_recently_used_program_is_dropped_first():
    f, ran = _counting(max_programs=2)
    for n in (1, 2, 1, 3):  # 1 and 2 recorded; 1 replays (now most recent); 3 drops 2
        _call(f, n)
    assert ran == [(1,), (2,), (3,)] and len(f._programs) == 2
    _call(f, 1)  # still kept
    _call(f, 2)  # was dropped: recorded again (and drops 3, the least recently used now)
    _call(f, 1)
    assert ran == [(1,), (2,), (3,), (2,)]
    _call(f, 3)
    assert ran[-1] == (3,) and len(f._programs) == 2


def test_argument_trees_are_cached_by_value_too():
    ran = []

    @trace(without_host=True, max_programs=2)
    def f(x, *, scale):
        ran.append(scale)
        return x * scale

    x = mge.tensor([1.0, 2.0])
    for scale in (2.0, 3.0, 2.0, 2.0, 4.0, 3.0):
        assert f(x, scale=scale).numpy().tolist() == [scale, 2 * scale]
    assert ran == [2.0, 3.0, 4.0, 3.0]  # 3.0 was the least recently used when 4.0 came


def test_the_default_limit_and_changing_it():
    f, ran = _counting()
    assert f.max_programs == tracing.DEFAULT_MAX_PROGRAMS == 64
    for n in range(1, 6):
        _call(f, n)
    f.max_programs = 2  # the three least recently used go now
    assert len(f._programs) == 2
    _call(f, 5)
    _call(f, 1)
    assert ran == [(1,), (2,), (3,), (4,), (5,), (1,)]
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="max_programs must be a positive int"):
            f.max_programs = bad
    with pytest.raises(ValueError, match="max_programs"):
        trace(lambda x: x, max_programs=0)


def test_a_full_cache_warns_once(monkeypatch):
    warned = []
    monkeypatch.setattr(tracing.logger, "warning", lambda msg, *args: warned.append(msg % args))
    f, _ = _counting(symbolic=False, max_programs=1)
    for n in (1, 2, 3, 1):
        _call(f, n)
    assert len(warned) == 1 and "more than 1 call signatures" in warned[0]
    assert "max_programs" in warned[0]


def test_what_a_dropped_signature_read_goes_with_its_program():
    # a function that reads an argument's value keys its programs by that value too; called with
    # ever new shapes, the note of which arguments each signature read grew without bound while
    # the programs themselves stayed at max_programs
    ran = []

    @trace(symbolic=True, max_programs=2)
    def f(x, k):
        ran.append(x.shape[0])
        return x * int(k.item())

    for n in range(1, 11):
        assert f(mge.tensor(np.ones(n, "float32")), mge.tensor(3)).numpy().tolist() == [3.0] * n
    assert len(f._programs) == 2 and len(f._read_args) == 2
    # a dropped signature is learned again when it comes back, and still keys by the value
    assert f(mge.tensor(np.ones(1, "float32")), mge.tensor(5)).numpy().tolist() == [5.0]
    assert f(mge.tensor(np.ones(1, "float32")), mge.tensor(3)).numpy().tolist() == [3.0]
    assert len(f._read_args) <= 2 and ran[-2:] == [1, 1]


# ----- a traced method and its instances -----

class Model(M.Module):
    def __init__(self):
        super().__init__()
        self.fc = M.Linear(3, 2)
        self.gm = GradManager().attach(self.parameters())
        self.opt = optim.SGD(self.parameters(), lr=0.1)

    @trace(symbolic=True)
    def forward(self, x):
        return F.relu(self.fc(x))

    @trace(symbolic=False)
    def train_step(self, x):
        # events too (GradManager, optimizer): they hold their own objects, not the model
        with self.gm:
            loss = (self.fc(x) ** 2).mean()
            self.gm.backward(loss)
        self.opt.step()
        self.opt.clear_grad()
        return loss


def _x(n=4):
    return mge.tensor(np.random.RandomState(n).randn(n, 3).astype("float32"))


def _expected(model, x):
    return np.maximum(x.numpy() @ model.fc.weight.numpy().T + model.fc.bias.numpy(), 0)


def test_a_deleted_model_is_freed_with_its_programs():
    model = Model()
    for _ in range(2):  # record, then replay / check
        np.testing.assert_allclose(model.forward(_x()).numpy(), _expected(model, _x()),
                                   rtol=1e-6)
        model.train_step(_x())
    assert len(Model.forward._programs) == 1 and len(Model.train_step._programs) == 1
    refs = [weakref.ref(model), weakref.ref(model.fc.weight), weakref.ref(model.opt)]
    del model
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    for traced in (Model.forward, Model.train_step):
        assert not traced._programs and not traced._instances and traced._last is None


def test_each_instance_has_its_own_programs_and_a_new_instance_records_anew():
    a, b = Model(), Model()
    x = _x()
    np.testing.assert_allclose(a.forward(x).numpy(), _expected(a, x), rtol=1e-6)
    np.testing.assert_allclose(b.forward(x).numpy(), _expected(b, x), rtol=1e-6)
    np.testing.assert_allclose(a.forward(x).numpy(), _expected(a, x), rtol=1e-6)
    assert len(Model.forward._programs) == 2
    del a
    gc.collect()
    assert len(Model.forward._programs) == 1  # b's
    c = Model()  # (may well reuse a's id: it must not find a's program)
    np.testing.assert_allclose(c.forward(x).numpy(), _expected(c, x), rtol=1e-6)
    np.testing.assert_allclose(b.forward(x).numpy(), _expected(b, x), rtol=1e-6)
    del b, c
    gc.collect()
    assert not Model.forward._programs


def test_a_hybrid_model_is_freed():
    torch = pytest.importorskip("torch")
    from megengine.module.pytorch import PyTorchModule

    class Hybrid(M.Module):
        def __init__(self):
            super().__init__()
            self.body = PyTorchModule(torch.nn.Linear(3, 3))
            self.head = M.Linear(3, 1)

        @trace(symbolic=True)
        def forward(self, x):
            return self.head(self.body(x))

    model = Hybrid()
    out = [model.forward(_x()).numpy() for _ in range(2)]
    np.testing.assert_array_equal(out[0], out[1])
    refs = [weakref.ref(model), weakref.ref(model.body.torch_module.weight)]
    del model
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_a_death_while_the_cache_changes_is_handled_after_the_change():
    # garbage collection may run a weak reference's callback inside any allocation, e.g. in the
    # middle of an OrderedDict update: the trace notes the death and drops the programs after
    model = Model()
    model.forward(_x())
    traced = Model.forward
    traced._busy = True
    del model
    gc.collect()
    assert len(traced._programs) == 1 and traced._dead
    traced._done()
    assert not traced._programs and not traced._dead and not traced._instances


def test_an_instance_without_weak_references_is_an_argument():
    class Slotted:
        __slots__ = ("w",)

        def __init__(self, w):
            self.w = mge.Parameter([w])

        @trace(symbolic=True, max_programs=1)
        def scale(self, x):
            return x * self.w

    a, b = Slotted(2.0), Slotted(3.0)
    x = mge.tensor([1.0, 2.0])
    assert a.scale(x).tolist() == [2.0, 4.0] and b.scale(x).tolist() == [3.0, 6.0]
    assert a.scale(x).tolist() == [2.0, 4.0]
    assert len(Slotted.scale._programs) == 1  # held as arguments are: until dropped


def test_a_dumped_method_names_its_own_arguments(tmp_path):
    from megengine.utils.comp_graph_tools import GraphInference

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.fc = M.Linear(3, 2)

        @trace(symbolic=True, capture_as_const=True)
        def forward(self, x):
            return self.fc(x)

    net = Net()
    x = _x()
    expected = net.forward(x).numpy()
    info = Net.forward.dump(str(tmp_path / "net.mgf"))
    assert info.inputs == ["arg_0"]  # the instance is not an input, as upstream's trace(model)
    out = GraphInference(str(tmp_path / "net.mgf")).run(x.numpy())
    np.testing.assert_allclose(list(out.values())[0], expected, rtol=1e-6)


@pytest.mark.parametrize("mode", [{"symbolic": False}, {"symbolic": True},
                                  {"without_host": True}])
def test_an_array_argument_written_in_place_is_keyed_by_its_value_now(mode):
    # a numpy array given by keyword (or inside a list) is part of the signature by value:
    # the key held the caller's array itself, so after an in-place write the next call took
    # the program recorded for the old value (a replay computed with it, a checked call
    # refused), and the array stayed alive as long as the program
    f = trace(lambda x, *, scale: x * mge.tensor(scale), **mode)
    x = mge.tensor([1.0, 2.0])
    scale = np.array([2.0, 3.0], "float32")
    for value in ([2.0, 3.0], [5.0, 7.0], [2.0, 3.0]):
        scale[:] = value
        np.testing.assert_array_equal(f(x, scale=scale).numpy(), np.array([1.0, 2.0]) * value)
    assert len(f._programs) == 2
    gone = weakref.ref(scale)
    del scale
    gc.collect()
    assert gone() is None


class _Config:
    """A user's object passed to a traced function, compared by identity (no __eq__)."""

    def __init__(self, k):
        self.k = k


@dataclasses.dataclass(frozen=True)
class _FrozenConfig:
    """A value object: equality and a hash of its own."""

    k: float


MODES = [{"symbolic": False}, {"symbolic": True}, {"without_host": True}]


@pytest.mark.parametrize("mode", MODES)
def test_an_object_argument_is_freed_when_the_caller_lets_go_and_its_program_goes(mode):
    # upstream's trace keeps no argument object; this cache held it by identity as long as its
    # program, which no later call could find once the caller let go of the object
    f = trace(lambda x, cfg: x * cfg.k, **mode)
    x = mge.tensor([1.0, 2.0])
    cfg = _Config(2.0)
    for _ in range(2):  # record, then replay / check
        assert f(x, cfg).tolist() == [2.0, 4.0]
    other = _Config(3.0)
    assert f(x, other).tolist() == [3.0, 6.0]  # another object: recorded anew, as before
    assert len(f._programs) == 2
    gone = weakref.ref(cfg)
    del cfg
    gc.collect()
    assert gone() is None
    assert len(f._programs) == 1  # its program went with it; the other's stays
    assert f(x, other).tolist() == [3.0, 6.0]
    assert len(f._programs) == 1


def test_an_object_argument_that_dies_while_the_cache_changes_goes_after_the_change():
    f = trace(lambda x, cfg: x * cfg.k, symbolic=True)
    cfg = _Config(2.0)
    f(mge.tensor([1.0]), cfg)
    f._busy = True
    del cfg
    gc.collect()
    assert len(f._programs) == 1 and f._dead
    f._done()
    assert not f._programs and not f._dead


@pytest.mark.parametrize("mode", MODES)
def test_an_equal_value_object_reuses_the_program(mode):
    # upstream reruns (or replays) its one trace whatever object comes: an equal value object
    # is the same argument, as an equal number is; an unequal one records anew
    ran = []

    def fn(x, cfg):
        ran.append(cfg.k)
        return x * cfg.k

    f = trace(fn, **mode)
    x = mge.tensor([1.0, 2.0])
    for k in (2.0, 2.0, 3.0, 2.0):
        assert f(x, _FrozenConfig(k)).tolist() == [k, 2 * k]
    assert len(f._programs) == 2
    recorded = [2.0, 3.0] if mode.get("without_host") else [2.0, 2.0, 3.0, 2.0]
    assert ran == recorded  # (checked calls run the body each time: none recorded anew)


def test_an_object_without_weak_references_is_held_until_its_program_goes():
    class Slotted:
        __slots__ = ("k",)

        def __init__(self, k):
            self.k = k

    f = trace(lambda x, cfg: x * cfg.k, symbolic=True, max_programs=1)
    x = mge.tensor([1.0, 2.0])
    a = Slotted(2.0)
    assert f(x, a).tolist() == [2.0, 4.0] and f(x, a).tolist() == [2.0, 4.0]
    assert f(x, Slotted(3.0)).tolist() == [3.0, 6.0]  # drops a's program
    assert len(f._programs) == 1


def test_a_module_argument_is_held_weakly_and_names_its_parameters_in_a_dump():
    net = M.Linear(3, 2)
    f = trace(lambda x, m: m(x), symbolic=True, capture_as_const=True)
    x = _x()
    f(x, net)
    info = f.dump(io.BytesIO())
    assert {"weight", "bias"} <= set(info.params)  # found through the argument tree
    gone = weakref.ref(net)
    del net
    gc.collect()
    assert gone() is None and not f._programs
