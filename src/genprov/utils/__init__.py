"""Small shared helpers: seeding, input validation, atomic writes, progress."""

from genprov.utils.io import (
    atomic_open,
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, numpy_rng, torch_generator
from genprov.utils.validation import check_finite, check_images, check_matrix, check_range

__all__ = [
    "atomic_open",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_finite",
    "check_images",
    "check_matrix",
    "check_range",
    "derive_seed",
    "numpy_rng",
    "progress",
    "read_json",
    "torch_generator",
]
