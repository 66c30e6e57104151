"""`CosineAnnealingLR`: the learning rate follows a cosine from its initial value down to eta_min."""
import math
import numbers

from .lr_scheduler import LRScheduler

__all__ = ["CosineAnnealingLR"]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * current_epoch / T_max)) / 2.

    The lr reaches ``eta_min`` at epoch ``T_max`` and, stepped further, rises again along the
    same cosine (period ``2 * T_max``), as upstream's and PyTorch's schedules do. The closed
    form is used, so ``step(epoch)`` may jump to any epoch.
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, current_epoch: int = -1):
        if not isinstance(T_max, numbers.Integral) or isinstance(T_max, bool) or T_max <= 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive int, got {T_max!r}")
        if not isinstance(eta_min, numbers.Real) or eta_min < 0:
            raise ValueError(f"CosineAnnealingLR: eta_min must be a non-negative number, "
                             f"got {eta_min!r}")
        self.T_max = int(T_max)
        self.eta_min = eta_min
        super().__init__(optimizer, current_epoch)

    def get_lr(self):
        factor = (1 + math.cos(math.pi * self.current_epoch / self.T_max)) / 2
        return [self.eta_min + (base_lr - self.eta_min) * factor for base_lr in self.base_lrs]
