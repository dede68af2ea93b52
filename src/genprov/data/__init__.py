"""Datasets, image I/O, splits and subsets: the data layer of genprov.

Everything here returns images as float32 tensors (N, C, H, W) in [-1, 1]. Built-in datasets are
``digits`` (embedded, no files), ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar2`` and ``olivetti``
(files under a data root); any folder of images, ``.npz``/``.npy`` file or LSUN-style LMDB loads too.

Example:
    >>> from genprov.data import load_dataset, split_indices
    >>> ds = load_dataset("digits", n=100, seed=0)
    >>> ds.images.shape, ds.n_channels, ds.image_size
    (torch.Size([100, 1, 8, 8]), 1, 8)
    >>> train_idx, val_idx = split_indices(len(ds), [0.9, 0.1], seed=0)

This package sits low in genprov's layers: it imports only ``genprov.config``, ``genprov.registry``,
``genprov.results``, ``genprov.utils`` and ``genprov.exceptions``.
"""

from genprov.data.conditioned import ConditionedExamples
from genprov.data.dataset import ImageDataset
from genprov.data.download import DOWNLOADABLE, download
from genprov.data.idx import read_idx
from genprov.data.images import (
    MAX_DECODED_PIXELS,
    decode_image,
    expand_image_paths,
    image_sizes,
    image_to_tensor,
    load_image,
    load_images,
    make_grid,
    max_decoded_pixels,
    min_image_size,
    png_roundtrip,
    resize_images,
    save_image_grid,
    save_images,
    to_model_range,
    to_uint8,
)
from genprov.data.perturb import PERTURBATIONS, gaussian_blur, jpeg_roundtrip, perturb
from genprov.data.sources import (
    DatasetInfo,
    dataset_info,
    has_split,
    image_folder_files,
    list_datasets,
    load_dataset,
    load_train_test,
    missing_files,
    resolve_data_root,
)
from genprov.data.splits import random_subsets, split_indices, stratified_split_indices
from genprov.data.tabular import TABULAR_DATASETS, TabularDataset, load_tabular

__all__ = [
    "DOWNLOADABLE",
    "MAX_DECODED_PIXELS",
    "PERTURBATIONS",
    "TABULAR_DATASETS",
    "ConditionedExamples",
    "DatasetInfo",
    "ImageDataset",
    "TabularDataset",
    "dataset_info",
    "decode_image",
    "download",
    "expand_image_paths",
    "gaussian_blur",
    "has_split",
    "image_folder_files",
    "image_sizes",
    "image_to_tensor",
    "jpeg_roundtrip",
    "list_datasets",
    "load_dataset",
    "load_image",
    "load_images",
    "load_tabular",
    "load_train_test",
    "make_grid",
    "max_decoded_pixels",
    "min_image_size",
    "missing_files",
    "perturb",
    "png_roundtrip",
    "random_subsets",
    "read_idx",
    "resize_images",
    "resolve_data_root",
    "save_image_grid",
    "save_images",
    "split_indices",
    "stratified_split_indices",
    "to_model_range",
    "to_uint8",
]
