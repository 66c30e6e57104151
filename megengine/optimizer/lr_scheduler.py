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
    A schedule started over an optimizer whose state, saved with a schedule, was loaded first
    (its groups carry ``initial_lr`` already) puts the loaded lrs back when its own state is
    loaded; see `_keep_loaded_lrs`.
    """

    # attributes that are not the schedule's state (state_dict leaves them out)
    _NOT_STATE = ("optimizer", "_loaded_lrs", "_written_lrs")

    def __init__(self, optimizer: Optimizer, current_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}"
            )
        if not isinstance(current_epoch, int):
            raise TypeError(f"current_epoch must be an int, got {type(current_epoch).__name__}")
        self.optimizer = optimizer
        self.current_epoch = current_epoch
        # The lrs of an optimizer whose state, saved with a schedule ("initial_lr" in its
        # groups), was loaded before this schedule started, which `_keep_loaded_lrs` puts back;
        # upstream refuses such a state in a fresh optimizer, so there a schedule always starts
        # first. Groups that carry "initial_lr" because an earlier scheduler ran over this
        # optimizer are not such a state (upstream's later schedule keeps its own first lrs).
        loaded = optimizer.__dict__.pop("_schedule_loaded", False)
        loaded_lrs = ([group["lr"] for group in optimizer.param_groups]
                      if current_epoch == -1 and loaded else None)
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
        self._loaded_lrs = loaded_lrs  # (after step(), which forgets them)

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
        self._written_lrs = lrs
        self._loaded_lrs = None  # a schedule that has stepped is no longer just started

    def state_dict(self) -> dict:
        """Every attribute except the optimizer (which has a state dict of its own)."""
        return {k: v for k, v in self.__dict__.items() if k not in self._NOT_STATE}

    def load_state_dict(self, state_dict: dict):
        """Restore what ``state_dict`` returned. The optimizer's lrs are not rewritten (as
        upstream's), except in `_keep_loaded_lrs`'s one case."""
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
        self._keep_loaded_lrs()

    def _keep_loaded_lrs(self):
        """Put back the lrs an optimizer had before this schedule started, when its state was
        loaded first and the lrs are still the ones this schedule wrote.

        In that order (``opt.load_state_dict(...)``, then a new scheduler, then its
        ``load_state_dict``) the constructor's ``step()`` replaced the loaded lrs with the first
        epoch's, and nothing would set them again before the next ``step()``: a resumed run
        trained an epoch at the initial lr. torch keeps the loaded lrs there; upstream never
        gets here (its optimizer refuses that state in a fresh optimizer). In upstream's order
        (a scheduler first, then both states) the loaded optimizer's lrs are kept anyway."""
        groups = self.optimizer.param_groups
        # (getattr: a scheduler pickled by an earlier version of this fork has neither)
        loaded_lrs = getattr(self, "_loaded_lrs", None)
        if loaded_lrs is None or [g["lr"] for g in groups] != getattr(self, "_written_lrs", None):
            return  # nothing loaded first, or lrs set since (by hand, by a loaded state): kept
        for group, lr in zip(groups, loaded_lrs):
            group["lr"] = lr
        self._written_lrs, self._loaded_lrs = list(loaded_lrs), None
