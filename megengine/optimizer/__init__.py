"""Optimizers, learning-rate schedulers and gradient clipping (upstream's `megengine.optimizer`)."""
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam
from .adamw import AdamW
from .clip_grad import clip_grad_norm, clip_grad_value
from .cosine_annealing_lr import CosineAnnealingLR
from .lamb import LAMB, LAMBFp16
from .lr_scheduler import LRScheduler
from .multi_step_lr import MultiStepLR
from .optimizer import Optimizer
from .sgd import SGD

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "LAMB", "LAMBFp16", "LRScheduler",
    "MultiStepLR", "CosineAnnealingLR",
    "clip_grad_norm", "clip_grad_value",
]
