"""All fuzzed ops by name (op name -> (family, generator)) and the seeded driver that runs them."""
import collections
import warnings

import numpy as np

from . import grad2, modules, ops_math, ops_nn, ops_tensor, ops_vision, optim
from . import ops_complex, ops_creation, ops_more, ops_nn2, ops_tensor2, ops_vision2, quant
from . import random_ops, transforms, vision_warp
from .float_inputs import run_float16, run_float64
from .gen import Mismatch, run
from .integer_inputs import run_integer
from .quantized_inputs import run_quantized
from .special_inputs import run_special, run_special_gradients

OPS = {}
for _mod in (ops_math, ops_tensor, ops_nn, ops_vision, modules, optim, grad2, vision_warp,
             quant, ops_tensor2, transforms, random_ops, ops_more,
             ops_nn2, ops_vision2, ops_complex, ops_creation):
    OPS.update(_mod.OPS)


MODES = {"quantized": run_quantized, "int": run_integer, "float64": run_float64,
         "float16": run_float16, "special": run_special, "special_grad": run_special_gradients}


def draw(name, seed, rng=None):
    """Case ``seed`` of op ``name`` (drawn from ``rng``, the seed's generator by default)."""
    rng = np.random.default_rng([seed, sum(map(ord, name))]) if rng is None else rng
    return OPS[name][1](rng)


def run_seed(name, seed, mode=None):
    """Draw and run case ``seed`` of op ``name``; returns "ok" or "error" (both refused), raises
    Mismatch on a discrepancy. ``mode`` "quantized", "int", "float64" or "float16": the case's
    float32 inputs quantized, integers or in the float dtype, checked against torch on their
    values (`quantized_inputs`, `integer_inputs`, `float_inputs`; also "refused" or "skip");
    "special" and "special_grad": NaN, infinities and zeros among the float32 inputs or the
    output gradients (`special_inputs`)."""
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    case = draw(name, seed, rng)
    if mode:
        return MODES[mode](case, rng)  # (it records numpy's warnings itself)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(case, rng)


def fuzz(names, seeds, start=0, mode=None):
    """Run ``seeds`` cases of each op; returns {name: (counter of outcomes, [messages])}."""
    report = {}
    for name in names:
        outcomes, msgs = collections.Counter(), []
        for s in range(start, start + seeds):
            try:
                outcomes[run_seed(name, s, mode)] += 1
            except Mismatch as e:
                outcomes["mismatch"] += 1
                msgs.append(f"seed {s}: {e}")
            except Exception as e:  # noqa: BLE001 (a crash of the generator or the oracle)
                outcomes["crash"] += 1
                msgs.append(f"seed {s}: fuzzer crash {type(e).__name__}: {e}")
        report[name] = (outcomes, msgs)
    return report
