"""Sequence classification and forecasting data: from arrays, CSV, and the real datasets of DATA.md.

    X, y = load_fashion_mnist("train")           # sequential Fashion-MNIST: (60000, 784) pixel ids, (60000,)
    X, y = load_acsf1()                            # (200, 1460, 1) appliance power, 10 classes (sktime)
    s = load_taylor()                              # (4032, 1) half-hourly electricity demand (pmdarima)
    inputs, targets = forecast_windows(s, context=336, horizon=48)
    batches = ArrayBatches({"inputs": X, "labels": y}, batch_size=32)   # for training.loop.train

The real datasets come with OS or PyPI packages; a missing one raises ImportError naming the package.
"""

from __future__ import annotations

import csv
import glob
import gzip
import os
import struct

import numpy as np
import torch

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


# ---- generic -------------------------------------------------------------------------------------
class ArrayBatches:
    """Random rows of aligned tensors; batch k is a pure function of (seed, step, micro), sharded by rank.

    `tensors` maps the model's forward argument names to tensors with the same first dimension.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        sizes = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"ArrayBatches: tensors must share their first dimension, got {sizes}")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must be divisible by the world size {world_size}")
        self.tensors, self.n = tensors, next(iter(sizes.values()))
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size

    def get(self, step: int, micro: int = 0) -> dict[str, torch.Tensor]:
        rng = np.random.Generator(np.random.PCG64([self.seed, step, micro]))
        rows = rng.integers(0, self.n, size=self.batch_size)
        per = self.batch_size // self.world_size
        idx = torch.from_numpy(rows[self.rank * per : (self.rank + 1) * per])
        return {k: v[idx] for k, v in self.tensors.items()}


def from_csv(path: str, label_column: int | None = -1, skip_header: bool | None = None):
    """Rows of numbers -> (X (n, length, 1) float32, y (n,) int64) or, with label_column=None, X only."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file {path!r} not found")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if skip_header is None:
        try:
            [float(v) for v in rows[0]]
            skip_header = False
        except ValueError:
            skip_header = True
    data = np.asarray([[float(v) for v in r] for r in rows[int(skip_header) :] if r], dtype=np.float64)
    if label_column is None:
        return torch.from_numpy(data).float()[..., None]
    y = data[:, label_column].astype(np.int64)
    X = np.delete(data, label_column % data.shape[1], axis=1)
    return torch.from_numpy(X).float()[..., None], torch.from_numpy(y)  # (n, length, 1), (n,)


def forecast_windows(series, context: int, horizon: int, stride: int = 1):
    """A series (T,) or (T, c) -> inputs (n, context, c), targets (n, horizon, c), all windows in order."""
    s = torch.as_tensor(np.asarray(series, dtype=np.float32))
    if s.ndim == 1:
        s = s[:, None]
    T = s.shape[0]
    if T < context + horizon:
        raise ValueError(f"series of length {T} is shorter than context + horizon = {context + horizon}")
    starts = torch.arange(0, T - context - horizon + 1, stride)
    idx = starts[:, None] + torch.arange(context + horizon)[None, :]
    windows = s[idx]  # (n, context + horizon, c)
    return windows[:, :context], windows[:, context:]


def split_by_time(series, fractions=(0.7, 0.1, 0.2)):
    """Consecutive train / validation / test pieces of a series (no shuffling across time)."""
    T = len(series)
    a = int(T * fractions[0])
    b = a + int(T * fractions[1])
    return series[:a], series[a:b], series[b:]


# ---- real datasets ---------------------------------------------------------------------------------
def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format, optionally .gz) -> numpy array of its dtype and shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0:
            raise ValueError(f"{path} is not an IDX file (bad magic number)")
        dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.dtype(dtypes[dtype_code])).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str = FASHION_MNIST_DIR):
    """Sequential Fashion-MNIST: X (n, 784) uint8 pixel ids as int64 (row-major scan), y (n,) int64."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images = glob.glob(os.path.join(root, f"{prefix}-images-idx3-ubyte*"))
    labels = glob.glob(os.path.join(root, f"{prefix}-labels-idx1-ubyte*"))
    if not images or not labels:
        raise ImportError(f"Fashion-MNIST not found in {root}: apt-get install dataset-fashion-mnist")
    X = read_idx(sorted(images)[0]).reshape(-1, 28 * 28).astype(np.int64)
    y = read_idx(sorted(labels)[0]).astype(np.int64)
    return torch.from_numpy(X), torch.from_numpy(y)


def load_acsf1(split: str | None = None):
    """ACSF1 appliance power (sktime): X (n, 1460, 1) float32, y (n,) int64 class ids 0..9."""
    try:
        from sktime.datasets import load_acsf1 as _load
    except ImportError:
        raise ImportError("the ACSF1 dataset needs sktime: pip install sktime") from None
    X, y = _load(split=split, return_type="numpy3D")  # (n, 1, 1460)
    classes = {c: i for i, c in enumerate(sorted(set(y.tolist())))}
    y_ids = np.asarray([classes[c] for c in y.tolist()], dtype=np.int64)
    return torch.from_numpy(np.ascontiguousarray(X.transpose(0, 2, 1))).float(), torch.from_numpy(y_ids)


def _pmdarima(name: str):
    try:
        from pmdarima import datasets
    except ImportError:
        raise ImportError(f"the {name} dataset needs pmdarima: pip install pmdarima") from None
    return datasets


def load_taylor() -> torch.Tensor:
    """Half-hourly electricity demand, (4032, 1) float32 (pmdarima)."""
    return torch.as_tensor(np.asarray(_pmdarima("taylor").load_taylor(), dtype=np.float32))[:, None]


def load_sunspots() -> torch.Tensor:
    """Monthly sunspot numbers, (2820, 1) float32 (pmdarima)."""
    return torch.as_tensor(np.asarray(_pmdarima("sunspots").load_sunspots(), dtype=np.float32))[:, None]
