"""megengine.data: datasets, samplers, transforms, collation and the DataLoader, on numpy."""
from .collator import Collator
from .dataloader import DataLoader, get_worker_info
from .dataset import ArrayDataset, ConcatDataset, Dataset, MapDataset, StreamDataset
from .sampler import (
    Infinite,
    MapSampler,
    RandomSampler,
    ReplacementSampler,
    Sampler,
    SequentialSampler,
    StreamSampler,
)

__all__ = [
    "Collator",
    "DataLoader",
    "get_worker_info",
    "ArrayDataset",
    "ConcatDataset",
    "Dataset",
    "MapDataset",
    "StreamDataset",
    "Infinite",
    "MapSampler",
    "RandomSampler",
    "ReplacementSampler",
    "Sampler",
    "SequentialSampler",
    "StreamSampler",
]
