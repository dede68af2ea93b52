"""In-memory image datasets.

An :class:`ImageDataset` holds the whole set as one float32 tensor (N, C, H, W) in [-1, 1] plus optional
int64 labels; the sets genprov works with (MNIST, CIFAR subsets, faces, digits) fit in memory, and one
tensor makes batching, subsetting and fingerprinting trivial.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from genprov.config import require
from genprov.exceptions import DataError
from genprov.utils.seeding import numpy_rng

__all__ = ["ImageDataset", "IndexLike", "fingerprint_arrays", "sample_indices"]

IndexLike: TypeAlias = Sequence[int] | np.ndarray | Tensor


def fingerprint_arrays(*arrays: np.ndarray | None, length: int = 16) -> str:
    """Short hex SHA-256 of the arrays' dtypes, shapes and bytes (``None`` entries count as absent).

    Args:
        arrays: Arrays to hash, in order.
        length: Number of hex digits to keep.
    """
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape};".encode())
        digest.update(contiguous.data)
    return digest.hexdigest()[:length]


def sample_indices(total: int, n: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a random subset of ``n`` out of ``total`` examples, or ``None`` for all.

    The choice depends only on ``(total, n, seed)``.

    Raises:
        ConfigError: If ``n`` is not a positive integer.
        DataError: If ``n`` exceeds ``total``.
    """
    if n is None:
        return None
    require(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1, "n", "a positive integer", n)
    if n > total:
        raise DataError(f"{n} examples were asked for but the data has only {total}; ask for at most {total}.")
    return np.sort(numpy_rng(seed, "sample", total).choice(total, size=n, replace=False)).astype(np.int64)


def as_index_tensor(indices: IndexLike, size: int, name: str = "indices") -> Tensor:
    """Validate ``indices`` (ints in ``[-size, size)``) and return them as a 1-D int64 tensor."""
    t = indices.detach().cpu() if isinstance(indices, Tensor) else torch.as_tensor(np.asarray(indices))
    if t.ndim != 1 or (t.numel() and (t.is_floating_point() or t.dtype == torch.bool)):
        raise DataError(f"{name} must be a 1-D sequence of integers; got shape {tuple(t.shape)}, dtype {t.dtype}.")
    t = t.to(torch.int64)
    if t.numel() and (int(t.min()) < -size or int(t.max()) >= size):
        raise DataError(f"{name} must lie in [0, {size}); got values in [{int(t.min())}, {int(t.max())}].")
    return t


def _check_image_tensor(images: object, name: str) -> None:
    """Shape, dtype and range check in one pass (``aminmax`` propagates NaN, so NaN is caught too)."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.dtype != torch.float32:
        got = (
            f"shape {tuple(images.shape)}, dtype {images.dtype}"
            if isinstance(images, Tensor)
            else type(images).__name__
        )
        raise DataError(f"{name} images must be a float32 tensor of shape (N, C, H, W) in [-1, 1]; got {got}.")
    if images.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(images.detach()))
    if not (lo >= -1.0 - 1e-4 and hi <= 1.0 + 1e-4):  # also false for NaN
        raise DataError(
            f"{name} images must have finite values in [-1, 1]; got values in [{lo:.4g}, {hi:.4g}]. Convert "
            "uint8 or [0, 1] images with genprov.data.to_model_range."
        )


@dataclass(eq=False, repr=False)
class ImageDataset(Dataset[tuple[Tensor, int]]):
    """A labelled or unlabelled set of images held in memory.

    Attributes:
        images: (N, C, H, W) float32 tensor in [-1, 1].
        labels: (N,) int64 tensor of class indices, or ``None`` when the set has no labels.
        name: Where the data came from (a registered name such as ``"mnist"`` or a path).
        class_names: Names of the classes, indexed by label, or ``None``.

    Example:
        >>> ds = ImageDataset(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), "toy")
        >>> x, y = ds[1]
        >>> tuple(x.shape), y, len(ds.subset([0, 2]))
        ((1, 8, 8), 1, 2)
    """

    images: Tensor
    labels: Tensor | None
    name: str
    class_names: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        _check_image_tensor(self.images, self.name)
        if self.labels is not None:
            if not isinstance(self.labels, Tensor) or self.labels.ndim != 1:
                raise DataError(f"{self.name} labels must be a 1-D int64 tensor or None; got {self.labels!r:.80}.")
            if self.labels.shape[0] != self.images.shape[0]:
                raise DataError(
                    f"{self.name} has {self.images.shape[0]} images but {self.labels.shape[0]} labels; "
                    "every image needs exactly one label."
                )
            if self.labels.dtype != torch.int64:
                if self.labels.is_floating_point():
                    raise DataError(f"{self.name} labels must be integers; got dtype {self.labels.dtype}.")
                self.labels = self.labels.to(torch.int64)
        if self.class_names is not None:
            self.class_names = tuple(str(c) for c in self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        """Image ``i`` as (C, H, W) and its label (-1 when the set has no labels)."""
        label = int(self.labels[i]) if self.labels is not None else -1
        return self.images[i], label

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        labelled = (
            f"{len(self.class_names)} classes"
            if self.class_names
            else ("labelled" if self.has_labels else "unlabelled")
        )
        return f"ImageDataset(name={self.name!r}, n={len(self)}, shape=({c}, {h}, {w}), {labelled})"

    @property
    def n_channels(self) -> int:
        """C: 1 for grayscale, 3 for RGB."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """H, the image height in pixels (H == W for every built-in set)."""
        return int(self.images.shape[2])

    @property
    def has_labels(self) -> bool:
        """Whether the set carries labels."""
        return self.labels is not None

    @property
    def n_classes(self) -> int | None:
        """Number of classes (from ``class_names``, else ``max(label) + 1``), or ``None`` without labels."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is None:
            return None
        return int(self.labels.max()) + 1 if self.labels.numel() else 0

    def subset(self, indices: IndexLike) -> ImageDataset:
        """The examples at ``indices`` (in that order), as a new dataset with the same name.

        Args:
            indices: 1-D ints (list, numpy array or tensor), each in ``[0, len(self))``.
        """
        index = as_index_tensor(indices, len(self))
        labels = self.labels[index] if self.labels is not None else None
        return ImageDataset(self.images[index], labels, self.name, self.class_names)

    def fingerprint(self) -> str:
        """Stable 16-digit hex SHA-256 of the images (float32 bytes, shape) and labels, for manifests.

        Equal content gives an equal fingerprint whatever the name; any changed pixel or label changes it.
        """
        labels = self.labels.cpu().numpy() if self.labels is not None else None
        return fingerprint_arrays(self.images.detach().cpu().contiguous().numpy(), labels)
