"""Captions of training images: from the class labels, or from a captions file.

* From labels (:func:`captions_from_labels`): digit classes read ``"a handwritten seven"``, other classes
  ``"a photo of a horse"`` / ``"a photo of an automobile"``.
* From a file (:func:`read_captions_file`): JSON, either a list of captions in the dataset's order or an object
  ``{image: caption}``; or CSV with a header naming an ``image`` (or ``file``) and a ``caption`` column. An image is
  named by its path relative to the image folder (``horse/001.png``), by its file name when that is unique, or
  for an ``.npz`` / built-in dataset by its index (``"0"``, ``"1"``, ...). Every image needs exactly one
  non-empty caption and every caption's image must exist: anything else is a one-line :class:`CaptionsError`
  naming the first offenders.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from genprov.data import ImageDataset, image_folder_files
from genprov.exceptions import DataError

__all__ = ["CaptionsError", "captions_for", "captions_from_labels", "read_captions_file"]

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SHOWN = 3


class CaptionsError(DataError):
    """Captions are missing, empty, or do not match the images."""


def _caption(name: str) -> str:
    if name.isdigit() and int(name) < len(_NUMBERS):
        return f"a handwritten {_NUMBERS[int(name)]}"
    noun = name.lower().replace("_", " ")
    article = "an" if noun[:1] in "aeiou" else "a"
    return f"a photo of {article} {noun}"


def captions_from_labels(dataset: ImageDataset) -> tuple[str, ...]:
    """One caption per image from its class name (``"a handwritten seven"``, ``"a photo of a horse"``).

    Raises:
        CaptionsError: The dataset has no labels.
    """
    if dataset.labels is None:
        raise CaptionsError(
            f"{dataset.name} has no labels to caption its images from; pass a captions file (--captions FILE: "
            "JSON or CSV mapping each image to its caption)."
        )
    names = dataset.class_names or tuple(str(i) for i in range(int(dataset.labels.max()) + 1 if len(dataset) else 0))
    return tuple(_caption(names[int(label)]) for label in dataset.labels.tolist())


def _listed(items: Sequence[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(repr(i) for i in items[:_SHOWN]) + more


def _read_entries(path: Path) -> list[str] | dict[str, str]:
    """A captions file's content: a list (by position) or ``{image key: caption}``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CaptionsError(f"Cannot read the captions file {path}: {err}.") from err
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise CaptionsError(f"{path} is not valid JSON ({err}); fix the captions file.") from err
        if isinstance(data, list) and all(isinstance(c, str) for c in data):
            return list(data)
        if isinstance(data, dict) and all(isinstance(c, str) for c in data.values()):
            return {str(k): v for k, v in data.items()}
        raise CaptionsError(
            f"{path} must hold a JSON list of captions or an object mapping each image to its caption (strings)."
        )
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        columns = [c.strip().lower() for c in (rows[0].keys() if rows else [])]
        key = next((c for c in ("image", "file") if c in columns), None)
        if key is None or "caption" not in columns:
            raise CaptionsError(
                f"{path} needs a header with an 'image' (or 'file') column and a 'caption' column; found {columns}."
            )
        entries: dict[str, str] = {}
        for row in rows:
            clean = {str(k).strip().lower(): (v or "") for k, v in row.items()}
            name = clean[key].strip()
            if name in entries:
                raise CaptionsError(f"{path} captions {name!r} twice; give each image one caption.")
            entries[name] = clean["caption"]
        return entries
    raise CaptionsError(f"{path} is a {path.suffix or 'suffix-less'} file; captions files are .json or .csv.")


def _image_keys(dataset: ImageDataset) -> list[list[str]]:
    """The names each image may be given by in a captions file (see the module docstring)."""
    folder = Path(dataset.name)
    if folder.is_dir():
        files = image_folder_files(folder)
        if len(files) == len(dataset):
            names = [f.name for f in files]
            unique = {n for n in names if names.count(n) == 1}
            return [
                [str(f.relative_to(folder)).replace(os.sep, "/"), *([f.name] if f.name in unique else []), str(i)]
                for i, f in enumerate(files)
            ]
    return [[str(i)] for i in range(len(dataset))]


def read_captions_file(path: str | os.PathLike[str], dataset: ImageDataset) -> tuple[str, ...]:
    """One caption per image of ``dataset`` from a captions file (formats in the module docstring).

    Raises:
        CaptionsError: An unreadable or malformed file, a caption for no image, an image without a caption, an
            empty caption, or a list of another length than the dataset (the first offenders named).
    """
    file = Path(path)
    if not file.is_file():
        raise CaptionsError(f"Captions file {file} does not exist; pass 'labels' or a .json / .csv captions file.")
    entries = _read_entries(file)
    if isinstance(entries, list):
        if len(entries) != len(dataset):
            raise CaptionsError(
                f"{file} lists {len(entries)} captions but {dataset.name} has {len(dataset)} images; give one caption "
                "per image, in the dataset's order."
            )
        captions = entries
    else:
        keys = _image_keys(dataset)
        lookup = {k: i for i, names in enumerate(keys) for k in names}
        unknown = [k for k in entries if k not in lookup]
        if unknown:
            raise CaptionsError(
                f"{file} captions images that {dataset.name} does not have: {_listed(unknown)}; name each image by "
                "its path relative to the image folder (e.g. 'horse/001.png') or its index."
            )
        found: dict[int, str] = {}
        for key, caption in entries.items():
            if lookup[key] in found:
                raise CaptionsError(f"{file} captions image {keys[lookup[key]][0]!r} twice; give it one caption.")
            found[lookup[key]] = caption
        missing = [keys[i][0] for i in range(len(dataset)) if i not in found]
        if missing:
            raise CaptionsError(
                f"{file} has no caption for {len(missing)} of the {len(dataset)} images of {dataset.name}: "
                f"{_listed(missing)}; caption every image."
            )
        captions = [found[i] for i in range(len(dataset))]
    empty = [str(i) for i, c in enumerate(captions) if not c.strip()]
    if empty:
        raise CaptionsError(f"{file} gives empty captions (images {_listed(empty)}); write a caption for each.")
    return tuple(c.strip() for c in captions)


def captions_for(source: str | os.PathLike[str], dataset: ImageDataset) -> tuple[str, ...]:
    """The captions ``--captions`` asks for: ``"labels"`` (:func:`captions_from_labels`) or a file path."""
    if os.fspath(source) == "labels":
        return captions_from_labels(dataset)
    return read_captions_file(source, dataset)
