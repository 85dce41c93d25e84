"""Datasets, Dirichlet partitions and per-agent batch loaders (see METHOD.md section 6).

``load_dataset`` gives tensors in memory (uint8 images, float32 1-D signals; a lazy split for
ImageNet), ``dirichlet_partition`` splits the training indices over agents, and ``AgentBatches``
turns the two into stacked, augmented, normalised ``[n_agents, B, *sample_shape]`` batches on the
device. Every dataset is one row of ``data.registry.REGISTRY``.
"""

from benchmark.data.loader import AgentBatches, eval_batches
from benchmark.data.partition import class_histogram, dirichlet_partition
from benchmark.data.registry import DATASETS, DatasetBundle, Split, load_dataset

__all__ = [
    "DATASETS",
    "AgentBatches",
    "DatasetBundle",
    "Split",
    "class_histogram",
    "dirichlet_partition",
    "eval_batches",
    "load_dataset",
]
