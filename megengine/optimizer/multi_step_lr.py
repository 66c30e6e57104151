"""`MultiStepLR`: multiply the learning rate by gamma at each milestone epoch."""
import numbers
from bisect import bisect_right
from collections.abc import Iterable, Mapping

from .lr_scheduler import LRScheduler

__all__ = ["MultiStepLR"]


def _checked_milestones(milestones, where):
    """``milestones`` as a list or tuple of increasing ints (a list or tuple kept as given)."""
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
        raise TypeError(f"{where}: milestones must be a list of ints, got {milestones!r}")
    listed = list(milestones)
    if not all(isinstance(m, numbers.Integral) and not isinstance(m, bool) for m in listed):
        raise TypeError(f"{where}: milestones must be ints, got {listed!r}")
    if listed != sorted(listed):
        raise ValueError(f"{where}: milestones must be increasing epoch indices, got {listed}")
    return milestones if isinstance(milestones, (list, tuple)) else listed


class MultiStepLR(LRScheduler):
    """lr = initial_lr * gamma ** (number of milestones <= current_epoch).

    ``milestones``: increasing epoch indices.
    """

    def __init__(self, optimizer, milestones, gamma: float = 0.1, current_epoch: int = -1):
        # a list or tuple is kept as given (upstream's state_dict shows it so)
        self.milestones = _checked_milestones(milestones, "MultiStepLR")
        self.gamma = gamma
        super().__init__(optimizer, current_epoch)

    # upstream's keys: the base lrs come from the optimizer's groups ("initial_lr"), so that a
    # resumed schedule follows the optimizer it is given (a new lr for fine-tuning included)
    _STATE_KEYS = ("milestones", "gamma", "current_epoch")

    def state_dict(self) -> dict:
        """``milestones``, ``gamma`` and ``current_epoch``: what a resumed schedule needs."""
        return {k: getattr(self, k) for k in self._STATE_KEYS}

    def load_state_dict(self, state_dict: dict):
        """Restore the three keys of :meth:`state_dict`; other keys are ignored, as upstream.
        They are checked as the constructor checks them before any is set."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"MultiStepLR.load_state_dict: expected the dict that "
                            f"MultiStepLR.state_dict() returned, got {type(state_dict).__name__}")
        for key in self._STATE_KEYS:
            if key not in state_dict:
                raise KeyError(
                    f"MultiStepLR.load_state_dict: state_dict has no {key!r}; pass what "
                    f"MultiStepLR.state_dict() returned (keys {', '.join(self._STATE_KEYS)})"
                )
        where = "MultiStepLR.load_state_dict"
        milestones = _checked_milestones(state_dict["milestones"], where)
        epoch = state_dict["current_epoch"]
        if not isinstance(epoch, numbers.Integral) or isinstance(epoch, bool):
            raise TypeError(f"{where}: current_epoch must be an int, got {epoch!r}")
        gamma = state_dict["gamma"]
        if not isinstance(gamma, numbers.Real) or isinstance(gamma, bool):
            raise TypeError(f"{where}: gamma must be a number, got {gamma!r}")
        self.milestones, self.gamma, self.current_epoch = milestones, gamma, epoch
        self._keep_loaded_lrs()

    def get_lr(self):
        factor = self.gamma ** bisect_right(self.milestones, self.current_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]
