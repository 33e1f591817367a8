"""The validation sample a run on in-memory arrays keeps (runs.SAMPLES): its data cannot be reloaded from
a path, so the figures that show images (top losses) and the export check read these instead."""

from __future__ import annotations

import numpy as np
import torch

from cnnlab.config import TrainConfig
from cnnlab.data import Dataset
from cnnlab.data.prepared import MEMORY_PREFIX, training_splits
from cnnlab.runs import RunDir

SAMPLE_SIZE = 256  # validation images kept; ~200 KB for 28x28 grey


def store_validation_sample(run_dir: RunDir, config: TrainConfig, dataset: Dataset, size: int = SAMPLE_SIZE) -> None:
    """For a run on in-memory arrays with a validation split: up to `size` of its validation images (a seeded,
    class-mixed choice, in split order), their labels and positions in the split. Other runs: nothing."""
    if not config.data.startswith(MEMORY_PREFIX) or not config.val_fraction:
        return
    _, val, _ = training_splits(config, dataset)
    n = len(val)
    pick = np.sort(np.random.default_rng(config.split_seed).permutation(n)[:size]) if n > size else np.arange(n)
    index = torch.from_numpy(pick.astype(np.int64))
    run_dir.write_samples(val.images[index].contiguous(), val.labels[index].contiguous(), index)
