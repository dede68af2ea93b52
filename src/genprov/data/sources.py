"""Where images come from: the built-in datasets and images on disk, behind one :func:`load_dataset`.

Built-in datasets (see :func:`list_datasets`):

=================  ======  ====  =====================================================================
name               size    C     splits (examples)
=================  ======  ====  =====================================================================
``digits``         8       1     scikit-learn's bundled digits, no files needed. ``train`` = the first
                                 1437 images, ``test`` = the last 360 (the set is ordered by writer, so
                                 this is a writer-disjoint, class-balanced split).
``mnist``          28      1     IDX files; train 60000, test 10000.
``fashion-mnist``  28      1     IDX files; train 60000, test 10000.
``cifar10``        32      3     convnetjs PNG strips: train = CIFAR-10 train images 0..3999, test =
                                 test images 0..999; labels from ``cifar10_labels.js``.
``cifar2``         32      3     automobile (0) vs horse (1) from the images above (an ``.npz``).
``olivetti``       64      1     40 people x 10 faces; train = each person's first 8 images, test = last 2.
=================  ======  ====  =====================================================================

Files are looked up under a data root (``data_root=``, else the ``GENPROV_DATA`` environment variable):
first ``ROOT/<folder>/<file>`` (folders ``mnist/``, ``fashion_mnist/``, ``cifar10_convnetjs/``, ``faces/``),
then ``ROOT/<file>``. A file may be stored whole, gzip-decompressed (for IDX), or as byte parts
``<file>.partNN``; MNIST's train images may also be named ``train-images-idx3-ubyte.recon.gz``.

Any other ``name`` is read as a path: a folder of images (class sub-folders give labels; ``train``/``test``
sub-folders give splits), an ``.npz``/``.npy`` array file, or an LSUN-style LMDB folder (``data.mdb``).
Nothing is cached on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.config import did_you_mean
from genprov.data.dataset import ImageDataset, sample_indices
from genprov.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, file_parts, read_bytes, read_idx
from genprov.data.images import (
    IMAGE_EXTENSIONS,
    read_pil_image,
    resize_images,
    stack_images,
    uint8_to_model,
)
from genprov.data.splits import split_indices, stratified_split_indices
from genprov.exceptions import ConfigError, DataError, MissingDependencyError
from genprov.utils.artifacts import PIPELINE_KIND, identify_artifact

__all__ = [
    "DatasetInfo",
    "dataset_info",
    "image_folder_files",
    "list_datasets",
    "load_dataset",
    "locate_file",
    "missing_files",
    "resolve_data_root",
]

DATA_ENV = "GENPROV_DATA"
_SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation")
_ARRAY_SUFFIXES = (".npz", ".npy", ".mdb")


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in dataset is and which files it needs.

    Attributes:
        name: Registered name, e.g. ``"mnist"``.
        description: One line.
        image_size: H (= W) in pixels.
        channels: C (1 grayscale, 3 RGB).
        n_classes: Number of label classes.
        splits: Available splits, e.g. ``("train", "test")``.
        needs_files: Whether files under a data root are needed (``False`` for ``digits``).
        files: Every file, relative to the data root (official names; see :func:`locate_file` for the
            accepted variants).
        license: Terms of use.
        class_names: Label names, indexed by label.
        n_examples: Number of examples per split.
        split_files: The files each split needs.
        downloadable: Whether ``genprov data download NAME`` can fetch the files.
    """

    name: str
    description: str
    image_size: int
    channels: int
    n_classes: int
    splits: tuple[str, ...]
    needs_files: bool
    files: tuple[str, ...]
    license: str
    class_names: tuple[str, ...] = ()
    n_examples: dict[str, int] = field(default_factory=dict)
    split_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    downloadable: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


@dataclass
class _Arrays:
    """A split as loaded, before subsetting: uint8 (N, C, H, W) pixels or a float tensor in [-1, 1]."""

    images: np.ndarray | Tensor
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


_Loader = Callable[[Path | None, DatasetInfo, str], _Arrays]


@dataclass(frozen=True)
class _Builtin:
    info: DatasetInfo
    loader: _Loader


# --------------------------------------------------------------------------------------------- data root


def resolve_data_root(data_root: str | os.PathLike[str] | None, *, needed_for: str = "this dataset") -> Path:
    """The data root folder: ``data_root`` if given, else ``$GENPROV_DATA``.

    Raises:
        DataError: If neither is set, or the folder does not exist.
    """
    if data_root is None or str(data_root) == "":
        env = os.environ.get(DATA_ENV, "")
        if not env:
            raise DataError(
                f"{needed_for} needs dataset files, but no data root was given. Pass --data-root DIR on the "
                f"command line (data_root=DIR in Python) or set the {DATA_ENV} environment variable to the "
                "folder holding mnist/, fashion_mnist/, cifar10_convnetjs/ and faces/."
            )
        data_root = env
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Data root {root} is not a folder; pass --data-root DIR (or set {DATA_ENV}) to an existing folder."
        )
    return root


_ALIASES = {"train-images-idx3-ubyte.gz": ("train-images-idx3-ubyte.recon.gz",)}


def _variants(filename: str) -> list[str]:
    names = [filename, *_ALIASES.get(filename, ())]
    if filename.endswith(".gz"):
        names.append(filename[: -len(".gz")])
    return names


def locate_file(root: Path, relative: str) -> Path | None:
    """Find a dataset file under ``root``, or ``None``.

    Tries ``root/relative`` and then ``root/<file name>``, each with the accepted variants of the name
    (MNIST's ``.recon.gz`` train images, the decompressed file without ``.gz``), stored whole or in byte
    parts. Returns the logical path (pass it to :func:`genprov.data.idx.read_bytes`).
    """
    rel = Path(relative)
    for folder in dict.fromkeys([root / rel.parent, root]):
        for name in _variants(rel.name):
            candidate = folder / name
            if file_parts(candidate) is not None:
                return candidate
    return None


def _unknown_dataset(name: str) -> ConfigError:
    return ConfigError(
        f"Unknown dataset {name!r}.{did_you_mean(name, _BUILTINS)} Choose one of: {', '.join(_BUILTINS)}, "
        "or pass a path to an image folder, an .npz/.npy file or an LMDB folder."
    )


def _check_split(info: DatasetInfo, split: str) -> None:
    if split not in info.splits:
        raise ConfigError(
            f"Dataset {info.name!r} has no split {split!r}.{did_you_mean(split, info.splits)} "
            f"Choose one of: {', '.join(info.splits)}."
        )


def missing_files(name: str, data_root: str | os.PathLike[str] | None, *, split: str | None = None) -> list[str]:
    """Files of the built-in dataset ``name`` (one ``split`` or all) not found under the data root.

    Args:
        name: A registered dataset name.
        data_root: The data root, or ``None`` for ``$GENPROV_DATA``.
        split: Only this split's files; ``None`` = every split.

    Returns:
        Relative paths (as in :attr:`DatasetInfo.files`) of the missing files; empty when all are present.
    """
    info = dataset_info(name)
    if not info.needs_files:
        return []
    if split is not None:
        _check_split(info, split)
    root = resolve_data_root(data_root, needed_for=f"Dataset {name!r}")
    wanted = info.split_files[split] if split is not None else info.files
    return [rel for rel in wanted if locate_file(root, rel) is None]


def _require_files(root: Path | None, info: DatasetInfo, split: str) -> dict[str, Path]:
    """Locate every file of ``split``; raise one :class:`DataError` listing all that are missing."""
    if root is None:
        root = resolve_data_root(None, needed_for=f"Dataset {info.name!r}")
    found = {rel: locate_file(root, rel) for rel in info.split_files[split]}
    missing = [rel for rel, path in found.items() if path is None]
    if missing:
        if info.downloadable:
            fix = f"Fetch them with: genprov data download {info.name} --data-root {root}"
        else:
            fix = "These files come with the project's shared data folder; point --data-root (or GENPROV_DATA) at it."
        raise DataError(
            f"Dataset {info.name!r} ({split} split) is missing {len(missing)} file(s) under {root}: "
            f"{', '.join(missing)}. {fix}"
        )
    return {rel: path for rel, path in found.items() if path is not None}


# --------------------------------------------------------------------------------------------- built-ins


def _load_digits(root: Path | None, info: DatasetInfo, split: str) -> _Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    part = slice(0, info.n_examples["train"]) if split == "train" else slice(info.n_examples["train"], None)
    pixels = np.asarray(bunch.images[part], dtype=np.float32)  # 0..16
    images = torch.from_numpy(pixels / 8.0 - 1.0)[:, None]
    return _Arrays(images, np.asarray(bunch.target[part], dtype=np.int64))


def _load_idx_pair(root: Path | None, info: DatasetInfo, split: str) -> _Arrays:
    image_rel, label_rel = info.split_files[split]
    paths = _require_files(root, info, split)
    images = read_idx(paths[image_rel], magic=IDX_IMAGES_MAGIC)
    labels = read_idx(paths[label_rel], magic=IDX_LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(
            f"{paths[image_rel]} must hold (N, H, W) images and {paths[label_rel]} (N,) labels; got shapes "
            f"{images.shape} and {labels.shape}."
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{paths[image_rel]} holds {images.shape[0]} images but {paths[label_rel]} holds {labels.shape[0]} "
            "labels; the two files must come from the same split. Download them again."
        )
    return _Arrays(images[:, None], labels.astype(np.int64))


def _cifar_labels(path: Path) -> np.ndarray:
    text = read_bytes(path).decode("utf-8", errors="replace")
    try:
        values = json.loads(text[text.index("[") : text.rindex("]") + 1])
        return np.asarray(values, dtype=np.int64)
    except (ValueError, TypeError):
        raise DataError(f"{path} must hold a JavaScript array of integer labels ('var labels=[6, 9, ...];').") from None


def _load_cifar10(root: Path | None, info: DatasetInfo, split: str) -> _Arrays:
    paths = _require_files(root, info, split)
    *strips, label_rel = info.split_files[split]
    blocks = []
    for rel in strips:
        pixels = np.asarray(read_pil_image(paths[rel]).convert("RGB"))
        if pixels.ndim != 3 or pixels.shape[1] != 32 * 32:
            raise DataError(
                f"{paths[rel]} must be an RGB strip with one 32x32 image (1024 pixels) per row; got {pixels.shape}."
            )
        # Row i holds image i's pixels in row-major order, each pixel an (R, G, B) triple.
        blocks.append(pixels.reshape(-1, 32, 32, 3).transpose(0, 3, 1, 2))
    images = np.concatenate(blocks)
    all_labels = _cifar_labels(paths[label_rel])
    if all_labels.shape != (51000,):
        raise DataError(
            f"{paths[label_rel]} must hold 51000 labels (50000 train + 1000 test); got {all_labels.shape[0]}."
        )
    start = 0 if split == "train" else 50000
    return _Arrays(np.ascontiguousarray(images), all_labels[start : start + len(images)])


def _load_cifar2(root: Path | None, info: DatasetInfo, split: str) -> _Arrays:
    paths = _require_files(root, info, split)
    return _read_array_file(paths[info.split_files[split][0]], split)


def _load_olivetti(root: Path | None, info: DatasetInfo, split: str) -> _Arrays:
    paths = _require_files(root, info, split)
    arrays = _read_array_file(paths[info.split_files[split][0]], None)
    if arrays.labels is None:
        raise DataError(f"{paths[info.split_files[split][0]]} must hold identity labels under the key 'target'.")
    rank = np.zeros(len(arrays.labels), dtype=np.int64)
    for person in np.unique(arrays.labels):
        members = np.flatnonzero(arrays.labels == person)
        rank[members] = np.arange(len(members))
    chosen = np.flatnonzero(rank < 8 if split == "train" else rank >= 8)
    return _Arrays(arrays.images[chosen], arrays.labels[chosen])


# --------------------------------------------------------------------------------------------- array files

# the key (and file) 'genprov sample' writes: float images in the model's range [-1, 1]
_SAMPLES_KEY, _SAMPLES_FILE = "samples", "samples.npz"
_IMAGE_KEYS = ("x", "X", "images", "imgs", "image", "data", "arr_0", _SAMPLES_KEY)
_LABEL_KEYS = ("y", "Y", "labels", "label", "target", "targets")
_CLASS_NAME_KEYS = ("class_names", "classes")


def _to_nchw(array: np.ndarray, where: str) -> np.ndarray:
    """(N, C, H, W) view of NHW / NHWC / NCHW image arrays (an alpha channel is dropped)."""
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        if array.shape[3] in (1, 3, 4):
            array = array.transpose(0, 3, 1, 2)
        elif array.shape[1] not in (1, 3, 4):
            raise DataError(f"{where} has shape {array.shape}; expected NHW, NHWC or NCHW images with 1 or 3 channels.")
        return array[:, :3] if array.shape[1] == 4 else array
    raise DataError(f"{where} has shape {array.shape}; expected NHW, NHWC or NCHW images with 1 or 3 channels.")


def _images_from_array(array: np.ndarray, where: str, *, model_range: bool = False) -> np.ndarray | Tensor:
    """uint8 (N, C, H, W) pixels, or a float32 tensor in [-1, 1], from an image array of any layout/range.

    With ``model_range`` float images are known to be in [-1, 1] (genprov's samples), never read as [0, 1].
    """
    array = _to_nchw(array, where)
    if array.shape[0] == 0 or array.size == 0:
        raise DataError(f"{where} has shape {array.shape}: it holds no image pixels. Point at a file with images.")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.integer):
        imin, imax = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if imin < 0 or imax > 255:
            raise DataError(f"{where} holds integers in [{imin}, {imax}]; integer images must be 0..255.")
        return np.ascontiguousarray(array, dtype=np.uint8)
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{where} has dtype {array.dtype}; images must be uint8 (0..255) or float ([0, 1] or [-1, 1]).")
    values = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise DataError(f"{where} contains {int((~finite).sum())} NaN or infinite values; clean the array first.")
    lo, hi = (float(values.min()), float(values.max())) if values.numel() else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0 and not model_range:
        return values.mul_(2.0).sub_(1.0)
    if lo >= -1.0 and hi <= 1.0:
        return values
    raise DataError(
        f"{where} holds floats in [{lo:.4g}, {hi:.4g}]; float images must be in [0, 1] or [-1, 1] "
        "(store 0..255 pixels as uint8)."
    )


def _labels_from_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(f"{where} has shape {array.shape}; labels must be a 1-D array of class indices.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DataError(f"{where} contains NaN or infinite labels.")
        if not np.array_equal(array, np.round(array)):
            raise DataError(f"{where} holds non-integer labels; labels must be class indices 0, 1, ...")
    elif not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{where} has dtype {array.dtype}; labels must be integers.")
    return array.astype(np.int64)


def _pick(keys: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((k for k in candidates if k in keys), None)


def _unreadable_array(where: str, err: Exception) -> DataError:
    """The error for an array file (or member) NumPy cannot read without unpickling, or at all."""
    if "Object arrays" in str(err):
        return DataError(
            f"{where} holds Python objects (a pickled dtype=object array); genprov never unpickles data files "
            "(that can run code). Save plain numeric arrays, e.g. np.savez(path, x=images.astype(np.uint8))."
        )
    if isinstance(err, OSError) and err.errno is not None:  # the file system's answer, e.g. no permission
        return DataError(f"Cannot read {where}: {err.strerror}.")
    if "pickled data" in str(err):
        return DataError(
            f"Cannot read {where}: it is not a NumPy .npz/.npy file (reading it would mean unpickling, which "
            "genprov never does); save the images with np.savez."
        )
    return DataError(
        f"Cannot read {where}: {err}. It is not a complete NumPy .npz/.npy file; save it again with np.savez."
    )


def _read_array_file(path: Path, split: str | None) -> _Arrays:
    """Read images (and labels) from an ``.npz`` or ``.npy`` file.

    Args:
        path: The file.
        split: ``"train"``/``"test"``/... to read split keys (``x_test``...), falling back to the plain keys
            for ``"train"``; ``None`` reads the plain keys only.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise _unreadable_array(str(path), err) from None
    if isinstance(loaded, np.ndarray):
        if split not in (None, "train"):
            raise DataError(f"{path} holds one array and so has no {split!r} split; use the 'train' split instead.")
        return _Arrays(_images_from_array(loaded, str(path)), None)
    with loaded as npz:

        def member(key: str) -> np.ndarray:
            try:
                return np.asarray(npz[key])
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise _unreadable_array(f"{path}[{key!r}]", err) from None

        keys = list(npz.files)
        image_key = label_key = None
        if split is not None:
            image_key = _pick(keys, [f"{k}_{split}" for k in _IMAGE_KEYS])
            label_key = _pick(keys, [f"{k}_{split}" for k in _LABEL_KEYS])
        if image_key is None and split in (None, "train"):
            image_key = _pick(keys, _IMAGE_KEYS)
            label_key = _pick(keys, _LABEL_KEYS)
        if image_key is None:
            wanted = (
                f"'x_{split}' or 'images_{split}'" if split not in (None, "train") else "'x', 'images' or 'x_train'"
            )
            raise DataError(f"{path} has no image array for this split: expected a key {wanted}; found keys {keys}.")
        images = _images_from_array(member(image_key), f"{path}[{image_key!r}]", model_range=image_key == _SAMPLES_KEY)
        labels = _labels_from_array(member(label_key), f"{path}[{label_key!r}]") if label_key else None
        names_key = _pick(keys, _CLASS_NAME_KEYS)
        class_names = tuple(str(c) for c in member(names_key).tolist()) if names_key else None
    if labels is not None and len(labels) != len(images):
        raise DataError(
            f"{path}: {image_key!r} holds {len(images)} images but {label_key!r} holds {len(labels)} labels; "
            "every image needs exactly one label."
        )
    return _Arrays(images, labels, class_names)


# --------------------------------------------------------------------------------------------- folders, LMDB


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )


def _split_folder(path: Path, split: str) -> Path:
    subdirs = {d.name for d in path.iterdir() if d.is_dir()}
    present = [s for s in _SPLIT_FOLDERS if s in subdirs]
    if split in subdirs and present:
        return path / split
    if present:
        raise DataError(f"{path} has split folders {present} but no {split!r} folder; pass one of those as split.")
    if split != "train":
        raise DataError(
            f"{path} holds a single set of images and so has no {split!r} split. Put the images in "
            f"{path}/train and {path}/{split} to have splits, or use the 'train' split instead."
        )
    return path


def _not_image_folder(kind: str) -> bool:
    """Whether a folder holding an artefact of ``kind`` (:func:`identify_artifact`) is surely no image folder."""
    if kind in ("workspace", "similarity index", "feature index", "feature store", "keyed family", PIPELINE_KIND):
        return True
    return kind.endswith((" checkpoint", " detector", " inversion attack", " defense"))


def _scan_folder(path: Path, split: str) -> tuple[list[Path], np.ndarray | None, tuple[str, ...] | None]:
    """Image files of an image folder, with labels from class sub-folders (sorted names) if there are any."""
    folder = _split_folder(path, split)
    found = identify_artifact(path)
    if found is not None and _not_image_folder(found.kind):
        raise DataError(
            f"{path} holds {found.describe()}, not a folder of images; pass a folder of images (or class "
            "sub-folders of images), an .npz / .npy file or a dataset name."
        )
    loose = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        if not loose:
            raise DataError(
                f"No images found in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)} files). Point the "
                "path at a folder of images, or of class sub-folders holding images."
            )
        return loose, None, None
    if loose:
        raise DataError(
            f"{folder} mixes image files ({loose[0].name}, ...) with class sub-folders ({class_dirs[0].name}, ...). "
            "Move the loose images into a class folder, or point the path at a folder of one kind."
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        members = _image_files(class_dir)
        if not members:
            raise DataError(
                f"Class folder {class_dir} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "remove it or add images."
            )
        files.extend(members)
        labels.extend([label] * len(members))
    return files, np.asarray(labels, dtype=np.int64), tuple(d.name for d in class_dirs)


def _load_lmdb(path: Path, split: str, n: int | None, seed: int, resize: int | None) -> ImageDataset:
    try:
        import lmdb
    except ImportError:
        raise MissingDependencyError("lmdb", "lmdb", "Reading LSUN-style LMDB datasets") from None
    if split != "train":
        raise DataError(
            f"The LMDB {path} holds a single set of images and so has no {split!r} split; use the 'train' split instead."
        )
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, subdir=True)
    except lmdb.Error as err:
        raise DataError(f"Cannot open the LMDB {path}: {err}.") from None
    try:
        with env.begin() as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
            if not keys:
                raise DataError(f"The LMDB {path} holds no entries.")
            chosen = sample_indices(len(keys), n, seed)
            picked = [keys[i] for i in chosen] if chosen is not None else keys
            encoded = [(f"{path} key {key.decode(errors='replace')!r}", txn.get(key) or b"") for key in picked]
    finally:
        env.close()
    return ImageDataset(stack_images(encoded, size=resize), None, str(path))


# --------------------------------------------------------------------------------------------- public API


def _finish(
    arrays: _Arrays, name: str, n: int | None, seed: int, resize: int | None, class_names: tuple[str, ...] | None
) -> ImageDataset:
    """Subset, convert to float [-1, 1], resize, and wrap in an :class:`ImageDataset`."""
    chosen = sample_indices(len(arrays), n, seed)
    images, labels = arrays.images, arrays.labels
    if chosen is not None:
        images = images[torch.from_numpy(chosen)] if isinstance(images, Tensor) else images[chosen]
        labels = labels[chosen] if labels is not None else None
    if isinstance(images, np.ndarray):
        images = uint8_to_model(torch.from_numpy(images if images.flags.writeable else images.copy()))
    if resize is not None:
        images = resize_images(images, resize)
    label_tensor = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)) if labels is not None else None
    return ImageDataset(images.contiguous(), label_tensor, name, class_names or arrays.class_names)


def _load_path(path: Path, split: str, n: int | None, seed: int, resize: int | None) -> ImageDataset:
    if path.is_dir() and (path / _SAMPLES_FILE).is_file():  # a 'genprov sample' folder: its samples, not its grid
        path = path / _SAMPLES_FILE
    if path.is_dir():
        if (path / "data.mdb").is_file():
            return _load_lmdb(path, split, n, seed, resize)
        files, labels, class_names = _scan_folder(path, split)
        chosen = sample_indices(len(files), n, seed)
        if chosen is not None:
            files = [files[i] for i in chosen]
            labels = labels[chosen] if labels is not None else None
        images = stack_images([(str(p), p) for p in files], size=resize)
        return ImageDataset(images, torch.from_numpy(labels) if labels is not None else None, str(path), class_names)
    if path.name == "data.mdb":
        return _load_lmdb(path.parent, split, n, seed, resize)
    if path.suffix.lower() in (".npz", ".npy"):
        return _finish(_read_array_file(path, split), str(path), n, seed, resize, None)
    raise DataError(
        f"Cannot load {path}: expected a folder of images, an .npz/.npy file, or an LMDB folder (with data.mdb); "
        f"got a {path.suffix or 'suffix-less'} file. Put single images into a folder and pass the folder."
    )


def load_dataset(
    name: str | os.PathLike[str],
    *,
    split: str = "train",
    data_root: str | os.PathLike[str] | None = None,
    resize: int | None = None,
    n: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load a built-in dataset or images from a path, as float32 (N, C, H, W) in [-1, 1].

    Args:
        name: A registered name (``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
            ``"cifar2"``, ``"olivetti"``) or a path: a folder of PNG/JPEG images (labels from class
            sub-folders, class names sorted; a flat folder has no labels; ``train``/``test`` sub-folders
            are splits), an ``.npz`` (keys ``x``/``images``/``x_train``... and ``y``/``labels``/
            ``target``/``y_train``...; uint8 0..255 or float [0, 1] or [-1, 1]; NHWC, NCHW or NHW), an
            ``.npy`` image array, or an LSUN-style LMDB folder (``data.mdb`` holding encoded images; needs
            the optional ``lmdb`` package).
        split: ``"train"`` or ``"test"`` (see the module docstring for how each set is split).
        data_root: Folder holding the dataset files; default ``$GENPROV_DATA``. ``digits`` needs none.
        resize: Resize to ``resize`` x ``resize`` (area averaging down, bilinear up; non-square images are
            centre-cropped first). Required for image folders/LMDBs whose images differ in size.
        n: Keep a random subset of ``n`` examples (sorted by index), chosen deterministically by ``seed``.
        seed: Seed of the subset choice.

    Returns:
        The :class:`ImageDataset`; ``name`` is the registered name or the path as given.

    Raises:
        ConfigError: Unknown dataset name (with a "did you mean" hint) or split.
        DataError: Missing data root or files (the message lists them and how to get them), unreadable,
            truncated or inconsistent files, NaN values, images of mixed sizes without ``resize``.
    """
    key = os.fspath(name)
    if key in _BUILTINS:
        builtin = _BUILTINS[key]
        _check_split(builtin.info, split)
        root = resolve_data_root(data_root, needed_for=f"Dataset {key!r}") if builtin.info.needs_files else None
        arrays = builtin.loader(root, builtin.info, split)
        return _finish(arrays, key, n, seed, resize, builtin.info.class_names or None)
    path = Path(key).expanduser()
    if path.exists():
        return _load_path(path, split, n, seed, resize)
    if os.sep in key or "/" in key or path.suffix.lower() in _ARRAY_SUFFIXES or key.startswith((".", "~")):
        raise DataError(f"{path} does not exist. Check the path (relative paths start from {Path.cwd()}).")
    raise _unknown_dataset(key)


def image_folder_files(path: str | os.PathLike[str], split: str = "train") -> list[Path]:
    """The image files of an image folder in the order :func:`load_dataset` loads them (its whole ``split``,
    without ``n``): what per-image metadata such as a captions file is matched against.

    Raises:
        DataError: As :func:`load_dataset` for the folder.
    """
    return _scan_folder(Path(path), split)[0]


def has_split(name: str | os.PathLike[str], split: str) -> bool:
    """Whether dataset ``name`` (a built-in name or a path) has its own ``split`` set: a built-in's
    listed splits, an image folder's ``split`` sub-folder, an ``.npz``'s ``x_<split>``-style key. A
    single set of images (a flat folder, an ``.npy``, an LMDB) has only ``"train"``. Missing or
    unreadable files are :func:`load_dataset`'s to report: they count as having the split."""
    key = os.fspath(name)
    if key in _BUILTINS:
        return split in _BUILTINS[key].info.splits
    if split == "train":
        return True
    path = Path(key).expanduser()
    if path.is_dir() and (path / _SAMPLES_FILE).is_file():
        path = path / _SAMPLES_FILE
    if path.is_dir():
        return not (path / "data.mdb").is_file() and (path / split).is_dir()
    if path.suffix.lower() == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return _pick(list(npz.files), [f"{k}_{split}" for k in _IMAGE_KEYS]) is not None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return True
    return not path.exists() or path.suffix.lower() != ".npy"


def load_train_test(
    name: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    resize: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> tuple[ImageDataset, ImageDataset]:
    """A dataset's training and test sets, for any source a reproduction accepts.

    Where the source has a ``test`` split (:func:`has_split`) both come from :func:`load_dataset`; a single
    set of images (a flat folder, an ``.npy``, an ``.npz`` without ``x_test``) is split by ``seed``:
    ``test_fraction`` of it (of each label, when labelled) becomes the test set. ``n_train`` / ``n_test``
    then keep seeded random subsets.

    Raises:
        ConfigError: ``test_fraction`` outside (0, 1).
        DataError: As :func:`load_dataset`; a single set too small to split.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be a number in (0, 1); got {test_fraction!r}.")
    if has_split(name, "test"):
        train = load_dataset(name, split="train", data_root=data_root, resize=resize, n=n_train, seed=seed)
        return train, load_dataset(name, split="test", data_root=data_root, resize=resize, n=n_test, seed=seed)
    full = load_dataset(name, split="train", data_root=data_root, resize=resize)
    fractions = [1 - test_fraction, test_fraction]
    if full.labels is not None:
        parts = stratified_split_indices(full.labels, fractions, seed=seed)
    else:
        parts = split_indices(len(full), fractions, seed=seed)
    if min(len(part) for part in parts) == 0:
        raise DataError(
            f"{full.name} holds {len(full)} images and no test split, too few to split off a test set "
            f"({test_fraction:.0%}); add images or give it train/ and test/ sub-folders."
        )
    out = []
    for part, n in zip(parts, (n_train, n_test), strict=True):
        chosen = sample_indices(len(part), n, seed)
        out.append(full.subset(part if chosen is None else part[chosen]))
    return out[0], out[1]


def list_datasets() -> list[DatasetInfo]:
    """Every built-in dataset, in a fixed order (digits first)."""
    return [b.info for b in _BUILTINS.values()]


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of the built-in dataset ``name``.

    Raises:
        ConfigError: On an unknown name, with a "did you mean" hint.
    """
    if name not in _BUILTINS:
        raise _unknown_dataset(name)
    return _BUILTINS[name].info


def _digits_info() -> DatasetInfo:
    return DatasetInfo(
        name="digits",
        description="scikit-learn's bundled handwritten digits (8x8, values 0..16); built in, no files needed",
        image_size=8,
        channels=1,
        n_classes=10,
        splits=("train", "test"),
        needs_files=False,
        files=(),
        license="BSD-3-Clause (scikit-learn); UCI ML hand-written digits, CC BY 4.0",
        class_names=tuple(str(d) for d in range(10)),
        n_examples={"train": 1437, "test": 360},
        split_files={"train": (), "test": ()},
    )


def _idx_info(name: str, folder: str, description: str, license: str, class_names: tuple[str, ...]) -> DatasetInfo:
    split_files: dict[str, tuple[str, ...]] = {
        "train": (f"{folder}/train-images-idx3-ubyte.gz", f"{folder}/train-labels-idx1-ubyte.gz"),
        "test": (f"{folder}/t10k-images-idx3-ubyte.gz", f"{folder}/t10k-labels-idx1-ubyte.gz"),
    }
    return DatasetInfo(
        name=name,
        description=description,
        image_size=28,
        channels=1,
        n_classes=10,
        splits=("train", "test"),
        needs_files=True,
        files=(*split_files["train"], *split_files["test"]),
        license=license,
        class_names=class_names,
        n_examples={"train": 60000, "test": 10000},
        split_files=split_files,
        downloadable=True,
    )


_CIFAR = "cifar10_convnetjs"
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_LICENSE = "research use; cite Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009"
_CIFAR10_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (*(f"{_CIFAR}/cifar10_batch_{k}.png" for k in range(4)), f"{_CIFAR}/cifar10_labels.js"),
    "test": (f"{_CIFAR}/cifar10_batch_50.png", f"{_CIFAR}/cifar10_labels.js"),
}
_CIFAR2_FILE = f"{_CIFAR}/cifar2_auto_horse.npz"
_OLIVETTI_FILE = "faces/olivetti_faces.npz"

_BUILTINS: dict[str, _Builtin] = {
    b.info.name: b
    for b in (
        _Builtin(_digits_info(), _load_digits),
        _Builtin(
            _idx_info(
                "mnist",
                "mnist",
                "MNIST handwritten digits, 28x28 grayscale",
                "CC BY-SA 3.0 (LeCun, Cortes, Burges)",
                tuple(str(d) for d in range(10)),
            ),
            _load_idx_pair,
        ),
        _Builtin(
            _idx_info(
                "fashion-mnist",
                "fashion_mnist",
                "Fashion-MNIST clothing images, 28x28 grayscale",
                "MIT (Zalando SE)",
                (
                    "T-shirt/top",
                    "Trouser",
                    "Pullover",
                    "Dress",
                    "Coat",
                    "Sandal",
                    "Shirt",
                    "Sneaker",
                    "Bag",
                    "Ankle boot",
                ),
            ),
            _load_idx_pair,
        ),
        _Builtin(
            DatasetInfo(
                name="cifar10",
                description="CIFAR-10 subset (train images 0..3999, test images 0..999), 32x32 RGB",
                image_size=32,
                channels=3,
                n_classes=10,
                splits=("train", "test"),
                needs_files=True,
                files=(*_CIFAR10_SPLITS["train"], _CIFAR10_SPLITS["test"][0]),
                license=_CIFAR_LICENSE,
                class_names=_CIFAR10_CLASSES,
                n_examples={"train": 4000, "test": 1000},
                split_files=_CIFAR10_SPLITS,
            ),
            _load_cifar10,
        ),
        _Builtin(
            DatasetInfo(
                name="cifar2",
                description="CIFAR-2: automobile (0) vs horse (1) from the CIFAR-10 subset, 32x32 RGB",
                image_size=32,
                channels=3,
                n_classes=2,
                splits=("train", "test"),
                needs_files=True,
                files=(_CIFAR2_FILE,),
                license=_CIFAR_LICENSE,
                class_names=("automobile", "horse"),
                n_examples={"train": 751, "test": 191},
                split_files={"train": (_CIFAR2_FILE,), "test": (_CIFAR2_FILE,)},
            ),
            _load_cifar2,
        ),
        _Builtin(
            DatasetInfo(
                name="olivetti",
                description="Olivetti faces: 40 people x 10 images, 64x64 grayscale (train: first 8 per person)",
                image_size=64,
                channels=1,
                n_classes=40,
                splits=("train", "test"),
                needs_files=True,
                files=(_OLIVETTI_FILE,),
                license="AT&T Laboratories Cambridge; credit requested",
                class_names=tuple(f"s{i}" for i in range(1, 41)),
                n_examples={"train": 320, "test": 80},
                split_files={"train": (_OLIVETTI_FILE,), "test": (_OLIVETTI_FILE,)},
            ),
            _load_olivetti,
        ),
    )
}
