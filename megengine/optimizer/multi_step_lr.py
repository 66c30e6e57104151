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
        given = milestones
        milestones = list(milestones)
        if not all(isinstance(m, numbers.Integral) and not isinstance(m, bool) for m in milestones):
            raise TypeError(f"MultiStepLR: milestones must be ints, got {milestones!r}")
        if milestones != sorted(milestones):
            raise ValueError(
                f"MultiStepLR: milestones must be increasing epoch indices, got {milestones}"
            )
        # a list or tuple is kept as given (upstream's state_dict shows it so)
        self.milestones = given if isinstance(given, (list, tuple)) else milestones
        self.gamma = gamma
        super().__init__(optimizer, current_epoch)

    # upstream's keys: the base lrs come from the optimizer's groups ("initial_lr"), so that a
    # resumed schedule follows the optimizer it is given (a new lr for fine-tuning included)
    _STATE_KEYS = ("milestones", "gamma", "current_epoch")

    def state_dict(self) -> dict:
        """``milestones``, ``gamma`` and ``current_epoch``: what a resumed schedule needs."""
        return {k: getattr(self, k) for k in self._STATE_KEYS}

    def load_state_dict(self, state_dict: dict):
        """Restore the three keys of :meth:`state_dict`; other keys are ignored, as upstream."""
        for key in self._STATE_KEYS:
            if key not in state_dict:
                raise KeyError(
                    f"MultiStepLR.load_state_dict: state_dict has no {key!r}; pass what "
                    f"MultiStepLR.state_dict() returned (keys {', '.join(self._STATE_KEYS)})"
                )
        self.__dict__.update({k: state_dict[k] for k in self._STATE_KEYS})

    def get_lr(self):
        factor = self.gamma ** bisect_right(self.milestones, self.current_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]
