"""`MultiStepLR`: multiply the learning rate by gamma at each milestone epoch."""
import numbers
from bisect import bisect_right

from .lr_scheduler import LRScheduler

__all__ = ["MultiStepLR"]


class MultiStepLR(LRScheduler):
    """lr = initial_lr * gamma ** (number of milestones <= current_epoch).

    ``milestones``: increasing epoch indices.
    """

    def __init__(self, optimizer, milestones, gamma: float = 0.1, current_epoch: int = -1):
        milestones = list(milestones)
        if not all(isinstance(m, numbers.Integral) and not isinstance(m, bool) for m in milestones):
            raise TypeError(f"MultiStepLR: milestones must be ints, got {milestones!r}")
        if milestones != sorted(milestones):
            raise ValueError(
                f"MultiStepLR: milestones must be increasing epoch indices, got {milestones}"
            )
        self.milestones = milestones
        self.gamma = gamma
        super().__init__(optimizer, current_epoch)

    def get_lr(self):
        factor = self.gamma ** bisect_right(self.milestones, self.current_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]
