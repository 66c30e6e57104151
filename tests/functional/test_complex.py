"""Complex tensors in the forward direction, as upstream has them: the ops that keep one meaning
for complex numbers compute it (numpy and torch as oracles); those that need an order, rounding,
or a cast that drops the imaginary part raise, naming the op and what to do (upstream's
ComplexTransformation refuses every op but a few). Gradients: tests/autodiff/test_complex_grad.py."""
import numpy as np
import pytest
import torch

import megengine as mge
import megengine.functional as F
import megengine.module as M

Z = np.array([[1 + 2j, -3 + 0.5j, 0.2 - 1j], [0, 2j, -1.5]], np.complex64)


def ct():
    return mge.tensor(Z)


# ----- refused, as upstream's complex tensors refuse them -----

ORDER = {  # name in the message -> the call
    "relu": lambda z: F.relu(z),
    "prelu": lambda z: F.prelu(z, mge.tensor([0.1])),
    "clip": lambda z: F.clip(z, 0, 1),
    "maximum": lambda z: F.maximum(z, z),
    "minimum": lambda z: F.minimum(z, 1.0),
    "max": lambda z: F.max(z, axis=1),
    "min": lambda z: z.min(),
    "argmax": lambda z: F.argmax(z),
    "argmin": lambda z: F.argmin(z, axis=0),
    "sort": lambda z: F.sort(z, descending=True),
    "argsort": lambda z: F.argsort(z),
    "topk": lambda z: F.topk(z, 2, descending=True),
    "less": lambda z: z < z,
    "less_equal": lambda z: z <= 1,
    "greater": lambda z: F.greater(z, 0),
    "greater_equal": lambda z: F.greater_equal(1.0, z),
    "max_pool2d": lambda z: F.max_pool2d(_image(z), 1),
    "adaptive_max_pool2d": lambda z: F.adaptive_max_pool2d(_image(z), 1),
    "hinge_loss": lambda z: F.nn.hinge_loss(z, z),
    "nms": lambda z: F.vision.nms(mge.tensor(np.ones((1, 4), "float32")), z[0, :1], 0.5),
}


def _image(z):
    """The (2, 3) complex tensor as a (1, 1, 2, 3) image."""
    return z.reshape(1, 1, 2, 3)


_ROI = mge.tensor([[0, 0, 0, 1, 1]], dtype="float32")


@pytest.mark.parametrize("name", sorted(ORDER))
def test_ops_that_need_an_order_refuse_complex_input(name):
    with pytest.raises(TypeError, match=f"^{name}: complex numbers have no order, got a complex "
                                        r"tensor \(complex64\); compare F.abs\(x\) or F.real"):
        ORDER[name](ct())


REAL_ONLY = {  # the public function the message names -> the call (the message says to take
    # F.real / F.imag / F.abs); activations torch refuses for complex input refuse it too
    "floor": F.floor, "ceil": F.ceil, "round": F.round, "trunc": F.trunc,
    "floor_div": lambda z: z // 2, "mod": lambda z: z % 2,
    "leaky_relu": F.leaky_relu, "relu6": F.relu6, "gelu": F.gelu, "softplus": F.softplus,
    "logsigmoid": F.logsigmoid, "hswish": F.hswish, "hsigmoid": F.hsigmoid,
    "softmax": F.softmax, "var": F.var, "std": F.std, "svd": F.svd,
    "norm": F.norm, "normalize": F.normalize,
    "cross_entropy": lambda z: F.nn.cross_entropy(z, mge.tensor([0, 1])),
    "square_loss": lambda z: F.nn.square_loss(z, z),
    "ctc_loss": lambda z: F.nn.ctc_loss(z.reshape(2, 1, 3), mge.tensor([2]), mge.tensor([[1]]),
                                        mge.tensor([1])),
    "conv2d": lambda z: F.conv2d(z.reshape(1, 1, 2, 3), mge.tensor(np.ones((1, 1, 1, 1), "float32"))),
    "avg_pool2d": lambda z: F.avg_pool2d(_image(z), 1),
    "sliding_window": lambda z: F.sliding_window(_image(z), 1),
    "adaptive_avg_pool2d": lambda z: F.adaptive_avg_pool2d(_image(z), 1),
    "batch_norm": lambda z: F.nn.batch_norm(_image(z), training=True),
    "layer_norm": lambda z: F.nn.layer_norm(z, 3, affine=False),
    "group_norm": lambda z: F.nn.group_norm(_image(z), 1, affine=False),
    "instance_norm": lambda z: F.nn.instance_norm(_image(z), affine=False),
    "local_response_norm": lambda z: F.nn.local_response_norm(_image(z), kernel_size=1),
    "interpolate": lambda z: F.vision.interpolate(_image(z), scale_factor=2),
    "roi_align": lambda z: F.vision.roi_align(_image(z), _ROI, (1, 1)),
    "roi_pooling": lambda z: F.vision.roi_pooling(_image(z), _ROI, (1, 1)),
    "warp_perspective": lambda z: F.vision.warp_perspective(
        _image(z), mge.tensor(np.eye(3, dtype="float32")[None]), (2, 3)),
    "remap": lambda z: F.vision.remap(_image(z), mge.tensor(np.zeros((1, 2, 3, 2), "float32"))),
    "correlation": lambda z: F.vision.correlation(_image(z), _image(z), max_displacement=0),
    "cvt_color": lambda z: F.vision.cvt_color(z.reshape(1, 1, 2, 3), "RGB2GRAY"),
    "dropout": lambda z: F.nn.dropout(z, 0.5),
}


@pytest.mark.parametrize("name", sorted(REAL_ONLY))
def test_real_functions_refuse_complex_input_instead_of_dropping_its_imaginary_part(name):
    with pytest.raises(TypeError, match=f"^{name}: it takes real numbers, got a complex tensor "
                                        r"\(complex64\); take F.real / F.imag / F.abs"):
        REAL_ONLY[name](ct())


def test_module_layers_name_the_function_they_call():
    with pytest.raises(TypeError, match="^leaky_relu: it takes real numbers"):
        M.LeakyReLU()(ct())
    with pytest.raises(TypeError, match="^batch_norm: it takes real numbers"):
        M.BatchNorm2d(1)(_image(ct()))


def test_sign_of_a_complex_number_is_refused():
    # numpy 2 gives z / |z|, numpy 1 and CuPy the sign of the real part, torch.sign refuses
    with pytest.raises(TypeError, match=r"^sign: the sign of a complex number is ambiguous.*"
                                        r"use x / F.abs\(x\)"):
        F.sign(ct())


@pytest.mark.parametrize("part", ["real", "imag"])
def test_the_parts_of_a_real_tensor_are_refused_as_upstreams(part):
    # upstream 1.13 measured: RuntimeError "no fallback implementation for GetReal"
    with pytest.raises(TypeError, match=f"^{part}: input must be complex, got dtype float32") \
            as error:
        getattr(F, part)(mge.tensor([1.0, 2.0]))
    assert isinstance(error.value, RuntimeError)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int32", "uint8"])
def test_casts_that_drop_the_imaginary_part_are_refused(dtype):
    z = ct()
    with pytest.raises(TypeError, match=f"^astype: casting it to {dtype} would drop the "
                                        r"imaginary part.*take F.real\(x\) or F.abs\(x\)"):
        z.astype(dtype)
    with pytest.raises(TypeError, match=f"^tensor: storing it as {dtype} would drop the "
                                        "imaginary part"):
        mge.tensor(Z, dtype=dtype)
    with pytest.raises(RuntimeError, match="keeps its dtype"):  # no conversion, as upstream
        mge.Tensor(z, dtype=dtype)
    with pytest.raises(TypeError, match="^tensor: storing it as"):
        mge.tensor(1 + 2j, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "int32"])
@pytest.mark.parametrize("value", [[1 + 2j, 3], [[1, 2j]], (1 + 0j,), [np.complex64(1 + 2j), 3],
                                   [mge.tensor([1 + 1j])]],
                         ids=["python", "nested", "tuple", "numpy scalars", "tensors"])
def test_a_list_of_complex_values_with_a_real_dtype_is_refused(value, dtype):
    # numpy raises its own "float() argument ..." for Python complex values, and only warns and
    # drops the imaginary part of numpy complex scalars and complex tensors
    with pytest.raises(TypeError, match=f"^tensor: storing it as {dtype} would drop the "
                                        "imaginary part"):
        mge.tensor(value, dtype=dtype)
    assert mge.tensor(value, dtype="bool").numpy().all()  # a cast to bool keeps its meaning


def test_writing_complex_values_into_a_real_tensor_is_refused_and_changes_nothing():
    x = mge.tensor([1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match=r"^x\[index\] = v: storing it in a float32 tensor would "
                                        r"drop the imaginary part.*x.astype\('complex64'\)"):
        x[0] = ct()[0, 0]
    with pytest.raises(TypeError, match="^x\\[index\\] = v"):
        x[1:] = 2j
    assert x.numpy().tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(TypeError, match="^full_like: filling a float32 tensor with it would drop"):
        F.full_like(x, 1 + 1j)


# ----- computed: one meaning for complex numbers, numpy's and torch's -----

def _torch(fn):
    return lambda a: fn(torch.tensor(a)).numpy()


SUPPORTED = {  # name -> (megengine call, oracle on the numpy array)
    "abs": (F.abs, np.abs),
    "exp": (F.exp, np.exp),
    "log": (lambda z: F.log(z + 3), lambda a: np.log(a + 3)),
    "sqrt": (F.sqrt, np.sqrt),
    "tanh": (F.tanh, np.tanh),
    # the activations torch computes for complex input (its sigmoid, silu and tanh)
    "sigmoid": (F.sigmoid, _torch(torch.sigmoid)),
    "silu": (F.silu, _torch(torch.nn.functional.silu)),
    "square": (F.square, np.square),
    "pow": (lambda z: z ** 3, lambda a: a ** 3),
    "div": (lambda z: z / (z + 4), lambda a: a / (a + 4)),
    "neg": (lambda z: -z, np.negative),
    "sum": (lambda z: F.sum(z, axis=1), lambda a: a.sum(1)),
    "mean": (lambda z: z.mean(), _torch(torch.mean)),
    "prod": (lambda z: F.prod(z, axis=0), lambda a: a.prod(0)),
    "cumsum": (lambda z: F.cumsum(z, 1), _torch(lambda t: t.cumsum(1))),
    "equal": (lambda z: z == z[0], lambda a: a == a[0]),
    "not_equal": (lambda z: z != 0, lambda a: a != 0),
    "isnan": (F.isnan, np.isnan),
    "to bool": (lambda z: z.astype("bool"), _torch(lambda t: t.bool())),
    "to complex128": (lambda z: z.astype("complex128"), lambda a: a.astype(np.complex128)),
    "matmul": (lambda z: F.matmul(z, z.T), lambda a: a @ a.T),
    # float and complex operands promote to complex (numpy's rule; torch's matmul refuses)
    "matmul float @ complex": (lambda z: F.matmul(mge.tensor(np.eye(2, dtype=np.float32)) * 2, z),
                               lambda a: np.eye(2, dtype=np.float32) * 2 @ a),
    "linear, complex bias": (lambda z: F.linear(mge.tensor(np.ones((2, 3), np.float32)),
                                                mge.tensor(np.eye(3, dtype=np.float32)), z[0]),
                             lambda a: np.ones((2, 3), np.float32) + a[0]),
    "mul by float": (lambda z: z * mge.tensor([2.0, 0.5, -1.0]),
                     lambda a: a * np.array([2.0, 0.5, -1.0], np.float32)),
    "where": (lambda z: F.where(mge.tensor([True, False, True]), z, 1.0),
              lambda a: np.where([True, False, True], a, 1.0)),
}


@pytest.mark.parametrize("name", sorted(SUPPORTED))
def test_ops_with_one_complex_meaning_match_numpy_and_torch(name):
    fn, oracle = SUPPORTED[name]
    out = fn(ct())
    expected = oracle(Z)
    assert out.dtype == expected.dtype
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_one_element_complex_tensor_converts_to_a_python_complex():
    assert complex(ct()[0, 0]) == 1 + 2j
    assert ct()[1, 1].item() == 2j



@pytest.mark.parametrize("dtype, scalar", [
    (d, s) for d in ["complex64", "complex128"] for s in [0.3, 3, 1 / 3 + 1j / 7]] + [
    (d, 1 / 3 + 1j / 7) for d in ["float16", "float32", "float64", "int32", "bool"]])
def test_python_scalars_meeting_complex_take_torchs_dtype_without_rounding(dtype, scalar):
    """A Python scalar is weak: a float next to complex128 stays float64-exact (it went through
    float32 before), a complex next to float64 gives complex128 (torch's rule; torch has
    complex32 for float16 where numpy has none, so complex64 there)."""
    values = np.array([1, 0.7, -2]) + (0.25j if dtype.startswith("complex") else 0)
    a = values.astype(dtype)
    out = mge.tensor(a, dtype=dtype) * scalar
    expected = str((torch.tensor(a) * scalar).dtype).replace("torch.", "")
    assert out.dtype == np.dtype("complex64" if expected == "complex32" else expected)
    exact = a.astype(out.dtype) * np.array(scalar, out.dtype)  # the scalar in the result dtype
    np.testing.assert_array_equal(out.numpy(), exact)
    np.testing.assert_array_equal((scalar - mge.tensor(a, dtype=dtype)).numpy(),
                                  np.array(scalar, out.dtype) - a.astype(out.dtype))


def test_complex_of_parts_that_do_not_broadcast_names_the_function_and_shapes():
    # numpy's "shape mismatch: objects cannot be broadcast to a single shape" came out here
    # before, naming neither; torch.complex refuses these parts too
    re, im = np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)
    with pytest.raises(RuntimeError):
        torch.complex(torch.tensor(re), torch.tensor(im))
    for error in (ValueError, RuntimeError):
        with pytest.raises(error, match=r"complex: shapes \(2, 3\) and \(3, 2\) do not broadcast"):
            F.complex(mge.tensor(re), mge.tensor(im))
