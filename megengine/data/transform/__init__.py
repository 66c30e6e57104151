"""Data transforms: the base classes and the vision transforms."""
from .meta_transform import PseudoTransform, Transform
from .vision import *  # noqa: F401,F403
from .vision import transform as _vision_transform

__all__ = ["Transform", "PseudoTransform"] + list(_vision_transform.__all__)
