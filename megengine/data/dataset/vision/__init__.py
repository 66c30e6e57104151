"""Vision datasets."""
from .meta_vision import VisionDataset
from .mnist import MNIST
