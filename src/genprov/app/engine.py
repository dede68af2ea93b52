"""The provenance engine: a workspace's entries loaded once, asked about one image at a time.

Every entry becomes an :class:`Analyzer` that takes a decoded image and returns a JSON-ready answer; the
service and ``genprov workspace ask`` both use :meth:`ProvenanceEngine.analyze`. Each analyzer converts
the image to its own model's size and channels and says so in ``notes`` when it had to.

New entry kinds register a loader in :data:`ANALYZERS` (``kind -> loader(workspace, entry) -> Analyzer``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from genprov.app.workspace import Entry, Workspace
from genprov.attribution.data import TRAKAttributor, TRAKConfig
from genprov.attribution.data.similarity import SimilarityAttributor
from genprov.attribution.model import NONE, KeyedGenerators, ModelAttributor
from genprov.data import image_to_tensor, png_roundtrip
from genprov.exceptions import CheckpointError, GenprovError
from genprov.experiments.similarity import attributor_from_info
from genprov.models.checkpoints import load_checkpoint
from genprov.models.diffusion import DDPM

__all__ = ["ANALYZERS", "Analyzer", "ProvenanceEngine", "prepare_image"]


def prepare_image(image: Image.Image, size: int, channels: int) -> tuple[torch.Tensor, list[str]]:
    """The image as (1, C, size, size) in [-1, 1] on the 8-bit grid, and notes on what was changed."""
    notes = []
    w, h = image.size
    own_channels = 1 if image.mode in ("1", "L", "I", "I;16", "F", "LA") else 3
    if (w, h) != (size, size):
        notes.append(f"resized from {w}x{h} to {size}x{size}" + (" (centre-cropped to a square)" if w != h else ""))
    if own_channels != channels:
        notes.append(f"converted to {'grayscale' if channels == 1 else 'RGB'}")
    x = image_to_tensor(image, size=size, channels=channels)[None]
    return png_roundtrip(x), notes


class Analyzer(Protocol):
    """One loaded entry."""

    entry: Entry

    def analyze(self, image: Image.Image) -> dict[str, Any]:
        """The entry's answer about ``image`` (JSON-ready)."""
        ...


@dataclass
class _FlipadAnalyzer:
    entry: Entry
    attributor: ModelAttributor

    def analyze(self, image: Image.Image) -> dict[str, Any]:
        x, notes = prepare_image(image, int(self.entry.info["image_size"]), int(self.entry.info["channels"]))
        result = self.attributor.attribute(x)
        made = bool(result.verdicts[0])
        return {
            "score": float(result.scores[0]),
            "threshold": float(result.threshold),
            "attributed": made,
            "verdict": f"made by {self.entry.name}" if made else f"not made by {self.entry.name}",
            "notes": notes,
        }


@dataclass
class _KeyedAnalyzer:
    entry: Entry
    family: KeyedGenerators

    def analyze(self, image: Image.Image) -> dict[str, Any]:
        x, notes = prepare_image(image, int(self.entry.info["image_size"]), int(self.entry.info["channels"]))
        result = self.family.attribute(x)
        label = result.labels[0]
        return {
            "user": label,
            "attributed": int(result.users[0]) >= 0,
            "verdict": f"made by {label}" if int(result.users[0]) >= 0 else label,
            "responses": [float(r) for r in result.responses[0]],
            "no_key_claims": int(result.users[0]) == NONE,
            "notes": notes,
        }


def _influencers(scores: np.ndarray, k: int, negative: int, name: str) -> dict[str, Any]:
    order = np.argsort(-scores, kind="stable")
    positive_mass = float(np.clip(scores, 0, None).sum())

    def row(i: int) -> dict[str, Any]:
        s = float(scores[i])
        share = max(s, 0.0) / positive_mass if positive_mass > 0 else 0.0
        return {"index": int(i), "score": s, "share": share, "image": f"/api/entries/{name}/train/{int(i)}.png"}

    return {
        "positive": [row(i) for i in order[:k]],
        "negative": [row(i) for i in order[::-1][:negative]],
        "n_train": len(scores),
    }


@dataclass
class _TRAKAnalyzer:
    entry: Entry
    attributor: TRAKAttributor
    k: int = 8
    negative: int = 4

    def analyze(self, image: Image.Image) -> dict[str, Any]:
        x, notes = prepare_image(image, int(self.entry.info["image_size"]), int(self.entry.info["channels"]))
        scores = self.attributor.scores(x)[0].double().numpy()
        out = _influencers(scores, self.k, self.negative, self.entry.name)
        out.update({"method": self.attributor.method, "notes": notes})
        return out


@dataclass
class _SimilarityAnalyzer:
    entry: Entry
    attributor: SimilarityAttributor
    k: int = 8

    def analyze(self, image: Image.Image) -> dict[str, Any]:
        x, notes = prepare_image(image, int(self.entry.info["image_size"]), int(self.entry.info["channels"]))
        result = self.attributor.attribute(x, k=self.k)
        soft = result.soft[0] if result.soft is not None else np.zeros(self.k)
        positive = [
            {
                "index": int(i),
                "score": float(s),
                "share": float(p),
                "image": f"/api/entries/{self.entry.name}/train/{int(i)}.png",
            }
            for i, s, p in zip(result.indices[0], result.scores[0], soft, strict=True)
        ]
        return {
            "method": self.attributor.method,
            "positive": positive,
            "negative": [],
            "remaining_share": float(max(0.0, 1.0 - soft.sum())),
            "n_train": int(self.entry.info["n_train"]),
            "notes": notes,
        }


def _load_flipad(ws: Workspace, entry: Entry) -> Analyzer:
    base = ws.entry_dir(entry.name)
    generator = load_checkpoint(base / "generator").model
    return _FlipadAnalyzer(entry, ModelAttributor.load(base / "detector", generator))


def _load_keyed(ws: Workspace, entry: Entry) -> Analyzer:
    return _KeyedAnalyzer(entry, KeyedGenerators.load(ws.entry_dir(entry.name) / "family"))


def _load_trak(ws: Workspace, entry: Entry) -> Analyzer:
    base = ws.entry_dir(entry.name)
    model = load_checkpoint(base / "model").model
    if not isinstance(model, DDPM):
        raise CheckpointError(f"Entry {entry.name!r}: its model is not a DDPM; re-add it with the store's model.")
    config = TRAKConfig.from_dict(entry.info["trak_config"])
    attributor = TRAKAttributor(model, config=config).fit(ws.train_images(entry.name), store=base / "store")
    return _TRAKAnalyzer(entry, attributor)


def _load_similarity(ws: Workspace, entry: Entry) -> Analyzer:
    base = ws.entry_dir(entry.name)
    info = dict(entry.info)
    for part in ("weights", "mapper"):
        if info.get(part):
            info[part] = str((base / "index" / info[part]) if info.get(f"{part}_in_index") else base / part)
    attributor = attributor_from_info(info).fit(ws.train_images(entry.name), store=base / "index")
    return _SimilarityAnalyzer(entry, attributor)


#: How each entry kind is loaded: ``kind -> loader(workspace, entry) -> Analyzer``.
ANALYZERS: dict[str, Callable[[Workspace, Entry], Analyzer]] = {
    "flipad": _load_flipad,
    "keyed": _load_keyed,
    "trak": _load_trak,
    "similarity": _load_similarity,
}


@dataclass
class ProvenanceEngine:
    """Every entry of a workspace, loaded; :meth:`analyze` asks them all about one image.

    Analyses are serialised by a lock (the models are not thread-safe), so concurrent requests queue.
    """

    workspace: Workspace
    analyzers: dict[str, Analyzer] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, workspace: Workspace) -> ProvenanceEngine:
        """Load every entry; an entry that fails to load is reported in ``errors`` instead of stopping the rest."""
        engine = cls(workspace)
        for entry in workspace.entries:
            loader = ANALYZERS.get(entry.kind)
            if loader is None:
                engine.errors[entry.name] = f"no analyzer for kind {entry.kind!r} in this genprov"
                continue
            try:
                engine.analyzers[entry.name] = loader(workspace, entry)
            except (GenprovError, OSError, KeyError, ValueError) as err:
                engine.errors[entry.name] = str(err)
        return engine

    def analyze(self, image: Image.Image) -> dict[str, Any]:
        """Ask every loaded entry about ``image``: ``{"entries": [{"name", "kind", ...answer}], "errors": {...}}``."""
        answers = []
        with self._lock, torch.no_grad():
            for name, analyzer in self.analyzers.items():
                answer: dict[str, Any] = {"name": name, "kind": analyzer.entry.kind}
                try:
                    answer.update(analyzer.analyze(image))
                except GenprovError as err:
                    answer["error"] = str(err)
                answers.append(answer)
        return {"entries": answers, "unavailable": dict(self.errors)}
