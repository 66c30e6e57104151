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
