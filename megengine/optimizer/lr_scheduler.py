"""`LRScheduler`: the base of learning-rate schedules that rewrite an optimizer's group lrs."""
import numbers

from .optimizer import Optimizer

__all__ = ["LRScheduler"]


class LRScheduler:
    """Sets ``param_group["lr"]`` of ``optimizer`` from ``get_lr()`` at every ``step()``.

    ``current_epoch=-1`` starts a schedule: each group's lr is remembered as ``initial_lr``.
    Any other value resumes one, and the groups must already carry ``initial_lr`` (as they
    do after ``optimizer.load_state_dict`` of an optimizer that had a scheduler).
    The constructor calls ``step()`` once, so the first epoch's lr is set on creation.
    """

    def __init__(self, optimizer: Optimizer, current_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}"
            )
        if not isinstance(current_epoch, int):
            raise TypeError(f"current_epoch must be an int, got {type(current_epoch).__name__}")
        self.optimizer = optimizer
        self.current_epoch = current_epoch
        for i, group in enumerate(optimizer.param_groups):
            if current_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(
                    f"param_groups[{i}] has no 'initial_lr': resuming a schedule with "
                    f"current_epoch={current_epoch} needs the optimizer state saved with it"
                )
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.step()

    def get_lr(self):
        """The learning rate of each parameter group at ``self.current_epoch``."""
        raise NotImplementedError(f"{type(self).__name__}.get_lr")

    def step(self, epoch=None):
        """Advance to the next epoch (or to ``epoch``) and write its lrs into the optimizer."""
        if epoch is not None and (not isinstance(epoch, numbers.Real) or isinstance(epoch, bool)):
            raise TypeError(f"{type(self).__name__}.step: epoch must be a number (or None for "
                            f"the next one), got {epoch!r}")
        previous = self.current_epoch
        self.current_epoch = self.current_epoch + 1 if epoch is None else epoch
        try:
            lrs = list(self.get_lr())
        except BaseException:  # the schedule stays where it was (upstream 1.13: it moved on)
            self.current_epoch = previous
            raise
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr

    def state_dict(self) -> dict:
        """Every attribute except the optimizer (which has a state dict of its own)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict):
        """Restore what ``state_dict`` returned; the optimizer's lrs are not rewritten."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected the dict that "
                            f"state_dict() returned, got {type(state_dict).__name__}")
        unknown = set(state_dict) - set(self.state_dict())
        if unknown:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: unknown keys {sorted(unknown)}; "
                f"expected some of {sorted(self.state_dict())}"
            )
        self.__dict__.update(state_dict)
