"""Readers for the on-disk formats of the small datasets: CIFAR pickles and IDX files.

Read here rather than through torchvision's dataset classes, which check md5 sums of the
official archives (and so refuse any other file in the same format, such as test fixtures).
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_cifar_batch", "read_idx"]

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_cifar_batch(path: str | Path, label_key: str) -> tuple[Tensor, Tensor]:
    """Images and labels of one CIFAR python pickle (``data_batch_1``, ``test``, ...).

    The file holds a dict with ``data``, uint8 ``(N, 3072)`` (the red, green and blue 32x32
    planes of each image in turn) and a list of ``N`` labels under ``label_key`` (``labels`` for
    CIFAR-10, ``fine_labels`` for CIFAR-100). Only open files you trust: this unpickles.

    Args:
        path: the pickle.
        label_key: name of the label list.

    Returns:
        ``images`` uint8 ``(N, 3, 32, 32)`` and ``labels`` int64 ``(N,)``.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "batch")
        >>> with open(path, "wb") as f:
        ...     pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [3, 1]}, f)
        >>> x, y = read_cifar_batch(path, "labels")
        >>> tuple(x.shape), y.tolist()
        ((2, 3, 32, 32), [3, 1])
    """
    with open(path, "rb") as f:
        try:
            entry = pickle.load(f, encoding="latin1")
        except Exception as err:
            raise ValueError(f"{path}: not a CIFAR python pickle ({type(err).__name__}: {err})") from err
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a dict with 'data' and {label_key!r}, got {type(entry).__name__}")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise ValueError(f"{path}: expected keys 'data' and {label_key!r}, found {sorted(entry)}")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {label_key!r} must hold {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    return images, torch.from_numpy(labels.astype(np.int64))


def read_idx(path: str | Path) -> Tensor:
    """The array stored in an IDX file (the MNIST format), gzipped or not.

    Layout: two zero bytes, a type code (``0x08`` uint8, ...), the number of dimensions, each
    dimension as a big-endian uint32, then the data, big-endian, in row-major order.
    A name ending in ``.gz`` is read through gzip.

    Args:
        path: ``train-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte.gz``, ...

    Returns:
        A tensor of the stored shape and type (uint8 for image and label files).

    Raises:
        ValueError: the header is not IDX or the data size does not match it.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9]))
        >>> read_idx(path).tolist()
        [7, 0, 9]
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # a truncated or mislabelled .gz
        raise ValueError(f"{path}: cannot read ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (header {raw[:4].hex() or 'empty'}, expected 0000 <type> <ndim>)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes), file holds {len(raw) - header}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(data.astype(dtype.newbyteorder("="), copy=True))
