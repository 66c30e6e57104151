"""Datasets: the base classes and the ready-made ones."""
from .meta_dataset import ArrayDataset, ConcatDataset, Dataset, MapDataset, StreamDataset
from .vision import (
    CIFAR10,
    CIFAR100,
    COCO,
    MNIST,
    Cityscapes,
    ImageFolder,
    ImageNet,
    Objects365,
    PascalVOC,
    VisionDataset,
)

# upstream's `from .vision import *` also makes the vision modules attributes here
# (megengine.data.dataset.coco is megengine.data.dataset.vision.coco)
from .vision import (  # noqa: F401,E402
    cifar, cityscapes, coco, folder, imagenet, meta_vision, mnist, objects365, utils, voc,
)
