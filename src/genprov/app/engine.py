"""The provenance engine: a workspace's entries loaded once, asked about one image at a time.

Every entry becomes an :class:`Analyzer` that takes a decoded image and returns a JSON-ready answer; the
service's endpoints and its worker pool (:class:`AnalysisPool`) use :meth:`ProvenanceEngine.analyze`. Each analyzer converts
the image to its own model's size and channels and says so in ``notes`` when it had to.

New entry kinds register a loader in :data:`ANALYZERS` (``kind -> loader(workspace, entry) -> Analyzer``).

:class:`AnalysisPool` runs analyses off the service's event loop: a few worker threads, each with its own
loaded engine (a model is only ever used by one thread), behind a bounded queue; it re-reads the workspace
when its manifest changes, so answers never come from an entry that was removed or replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image

from genprov.app.workspace import MANIFEST, Entry, Workspace
from genprov.attribution.data import TRAKAttributor, TRAKConfig
from genprov.attribution.data.similarity import PARTS, SimilarityAttributor
from genprov.attribution.data.trak_shards import fit_recorded_store
from genprov.attribution.model import NONE, KeyedGenerators, ModelAttributor
from genprov.data import image_to_tensor, min_image_size, png_roundtrip
from genprov.data.collections import is_collection_key
from genprov.exceptions import CheckpointError, ConfigError, DataError, GenprovError
from genprov.models.checkpoints import load_checkpoint
from genprov.models.diffusion import DDPM
from genprov.models.t2i import check_prompts, encode_examples, load_pipeline
from genprov.models.t2i.source import open_pipeline
from genprov.storage import FeatureStore

__all__ = [
    "ANALYZERS",
    "DEFAULT_QUEUE",
    "DEFAULT_WORKERS",
    "PROMPT_OPTIONAL",
    "PROMPT_REQUIRED",
    "AnalysisPool",
    "Analyzer",
    "BusyError",
    "LoadedWorkspace",
    "PromptRequiredError",
    "ProvenanceEngine",
    "Timing",
    "prepare_image",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Largest accepted upload, in MB (``genprov serve --max-upload-mb``).
DEFAULT_MAX_UPLOAD_MB = 10.0
#: Worker threads of an :class:`AnalysisPool` (each loads its own copy of every entry).
DEFAULT_WORKERS = 1
#: Requests an :class:`AnalysisPool` lets wait beyond the running ones before answering "busy".
DEFAULT_QUEUE = 128
_RELOAD_RETRY_S = 10.0


def prepare_image(image: Image.Image, size: int, channels: int) -> tuple[torch.Tensor, list[str]]:
    """The image as (1, C, size, size) in [-1, 1] on the 8-bit grid, and notes on what was changed."""
    notes = []
    w, h = image.size
    own_channels = 1 if image.mode in ("1", "L", "I", "I;16", "F", "LA") else 3
    if (w, h) != (size, size):
        notes.append(f"resized from {w}x{h} to {size}x{size}" + (" (centre-cropped to a square)" if w != h else ""))
    if own_channels != channels:
        notes.append(f"converted to {'grayscale' if channels == 1 else 'RGB'}")
    x = image_to_tensor(image, size=size, channels=channels, min_size=min_image_size(size), name="the upload")[None]
    return png_roundtrip(x), notes


class PromptRequiredError(DataError):
    """An entry attributes to a text-to-image model and the query came without its prompt."""


#: What an entry does with each query's prompt (:attr:`Analyzer.prompt_use`): a text-to-image TRAK entry needs it;
#: entries of a text-to-image pipeline's outputs (a FLIPAD detector of its VAE) and similarity entries accept it and
#: record it in their answer; the others (GANs, keyed families, DDPMs) ignore it.
PROMPT_REQUIRED, PROMPT_OPTIONAL = "required", "optional"


class Analyzer(Protocol):
    """One loaded entry."""

    entry: Entry

    @property
    def prompt_use(self) -> str | None:
        """:data:`PROMPT_REQUIRED`, :data:`PROMPT_OPTIONAL` (recorded in the answer when given) or ``None`` (ignored)."""
        ...

    def analyze(self, image: Image.Image, prompt: str | None = None) -> dict[str, Any]:
        """The entry's answer about ``image`` (JSON-ready); ``prompt`` is the query's prompt, which entries of a
        text-to-image model need and the others ignore."""
        ...


def _with_prompt(answer: dict[str, Any], prompt: str | None) -> dict[str, Any]:
    """``answer`` with the query's prompt recorded (an entry that accepts one, when given)."""
    return {**answer, "prompt": prompt} if prompt else answer


@dataclass
class _FlipadAnalyzer:
    """A FLIPAD (or baseline) detector of a GAN, or of a text-to-image pipeline's VAE (``pipeline``: its outputs
    carry their prompt, which the answer records)."""

    entry: Entry
    attributor: ModelAttributor
    pipeline: bool = False

    @property
    def prompt_use(self) -> str | None:
        return PROMPT_OPTIONAL if self.pipeline else None

    def analyze(self, image: Image.Image, prompt: str | None = None) -> dict[str, Any]:
        x, notes = prepare_image(image, int(self.entry.info["image_size"]), int(self.entry.info["channels"]))
        result = self.attributor.attribute(x)
        made = bool(result.verdicts[0])
        answer = {
            "score": float(result.scores[0]),
            "threshold": float(result.threshold),
            "attributed": made,
            "verdict": f"made by {self.entry.name}" if made else f"not made by {self.entry.name}",
            "notes": notes,
        }
        return _with_prompt(answer, prompt if self.pipeline else None)


@dataclass
class _KeyedAnalyzer:
    entry: Entry
    family: KeyedGenerators
    prompt_use: ClassVar[str | None] = None

    def analyze(self, image: Image.Image, prompt: str | None = None) -> dict[str, Any]:
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
    """A TRAK / D-TRAK entry; ``pipeline`` (a text-to-image entry's, with its LoRA) encodes each query with its
    prompt."""

    entry: Entry
    attributor: TRAKAttributor
    pipeline: Any = None
    k: int = 8
    negative: int = 4

    @property
    def prompt_use(self) -> str | None:
        return PROMPT_REQUIRED if self.pipeline is not None else None

    def analyze(self, image: Image.Image, prompt: str | None = None) -> dict[str, Any]:
        x, notes = prepare_image(image, int(self.entry.info["image_size"]), int(self.entry.info["channels"]))
        if self.pipeline is None:
            scores = self.attributor.scores(x)
        else:
            if not prompt:
                raise PromptRequiredError(f"Entry {self.entry.name!r} needs the query's prompt.")
            query = encode_examples(self.pipeline, x, [prompt], option="prompt")
            scores = self.attributor.scores_from_features(self.attributor.featurize_queries(query))
        out = _influencers(scores[0].double().numpy(), self.k, self.negative, self.entry.name)
        out.update({"method": self.attributor.method, "notes": notes})
        return _with_prompt(out, prompt if self.pipeline is not None else None)


@dataclass
class _SimilarityAnalyzer:
    """A similarity index over training images: it needs no model (the nearest training images of the query), and
    records the query's prompt when given (e.g. a customized pipeline's output with its token)."""

    entry: Entry
    attributor: SimilarityAttributor
    k: int = 8
    prompt_use: ClassVar[str | None] = PROMPT_OPTIONAL

    def analyze(self, image: Image.Image, prompt: str | None = None) -> dict[str, Any]:
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
        answer = {
            "method": self.attributor.method,
            "positive": positive,
            "negative": [],
            "remaining_share": float(max(0.0, 1.0 - soft.sum())),
            "n_train": int(self.entry.info["n_train"]),
            "notes": notes,
        }
        return _with_prompt(answer, prompt)


def _load_flipad(ws: Workspace, entry: Entry) -> Analyzer:
    base = ws.entry_dir(entry.name)
    if entry.info.get("pipeline"):  # a detector of a text-to-image pipeline's VAE (its fingerprint is checked)
        vae = load_pipeline(base / "generator").vae
        return _FlipadAnalyzer(entry, ModelAttributor.from_pretrained(base / "detector", vae), pipeline=True)
    generator = load_checkpoint(base / "generator").model
    return _FlipadAnalyzer(entry, ModelAttributor.from_pretrained(base / "detector", generator))


def _load_keyed(ws: Workspace, entry: Entry) -> Analyzer:
    return _KeyedAnalyzer(entry, KeyedGenerators.from_pretrained(ws.entry_dir(entry.name) / "family"))


def _load_trak(ws: Workspace, entry: Entry) -> Analyzer:
    base = ws.entry_dir(entry.name)
    config = TRAKConfig.from_dict(entry.info["trak_config"])
    images = ws.train_images(entry.name)
    t2i = entry.info.get("t2i")
    if t2i:  # a text-to-image pipeline (and LoRA): the training images are encoded with their captions
        pipe = open_pipeline(base / "model", base / "lora" if t2i.get("lora") else None)
        train = encode_examples(pipe, images, ws.train_captions(entry.name), option=f"entry {entry.name!r}'s captions")
        attributor = TRAKAttributor.for_pipeline(pipe, config).fit(train, store=base / "store")
        return _TRAKAnalyzer(entry, attributor, pipe)
    model = load_checkpoint(base / "model").model
    if not isinstance(model, DDPM):
        raise CheckpointError(f"Entry {entry.name!r}: its model is not a DDPM; re-add it with the store's model.")
    attributor = TRAKAttributor(model, config=config)
    store = FeatureStore.open(base / "store")
    if is_collection_key(store.spec.get("data_fingerprint")):
        n_train = fit_recorded_store(attributor, store).length  # images checked when the entry was added
        if n_train != len(images):
            raise DataError(f"entry {entry.name!r} featurized {n_train} images but holds {len(images)}; add it again.")
    else:
        attributor.fit(images, store=base / "store")  # checks the training images
    return _TRAKAnalyzer(entry, attributor)


def _load_similarity(ws: Workspace, entry: Entry) -> Analyzer:
    base = ws.entry_dir(entry.name)
    info = entry.info
    moved = {
        part: (base / "index" / str(info[part])) if info.get(f"{part}_in_index") else base / part
        for part in PARTS
        if info.get(part)
    }
    attributor = SimilarityAttributor.from_pretrained(base / "index", moved)
    train = ws.train_images(entry.name)
    if is_collection_key(attributor.data_fingerprint_):  # its files were checked when the entry was added
        if len(train) != attributor.n_train_:
            raise DataError(
                f"entry {entry.name!r} indexes {attributor.n_train_} images but holds {len(train)}; add it again."
            )
    else:
        attributor.fit(train, store=attributor.index_)  # checks the training images
    return _SimilarityAnalyzer(entry, attributor)


#: How each entry kind is loaded: ``kind -> loader(workspace, entry) -> Analyzer``.
ANALYZERS: dict[str, Callable[[Workspace, Entry], Analyzer]] = {
    "flipad": _load_flipad,
    "keyed": _load_keyed,
    "trak": _load_trak,
    "similarity": _load_similarity,
}


def _reason(err: BaseException) -> str:
    """One line saying what went wrong: a genprov error's own message, else the exception's type and text."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, GenprovError) and text else f"{type(err).__name__}: {text or 'no message'}"


@dataclass
class ProvenanceEngine:
    """Every entry of a workspace, loaded; :meth:`analyze` asks them all about one image.

    One engine is used by one thread at a time (a lock enforces it: the models are not thread-safe); the
    service runs several engines side by side through :class:`AnalysisPool`.
    """

    workspace: Workspace
    analyzers: dict[str, Analyzer] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, workspace: Workspace) -> ProvenanceEngine:
        """Load every entry; an entry that fails to load is reported in ``errors`` (and logged) instead of
        stopping the rest."""
        engine = cls(workspace)
        for entry in workspace.entries:
            loader = ANALYZERS.get(entry.kind)
            if loader is None:
                engine.errors[entry.name] = f"no analyzer for kind {entry.kind!r} in this genprov"
            else:
                try:
                    engine.analyzers[entry.name] = loader(workspace, entry)
                except Exception as err:  # every failure is reported per entry, none stops the service
                    engine.errors[entry.name] = _reason(err)
            if entry.name in engine.errors:
                log.warning("workspace entry %r is unavailable: %s", entry.name, engine.errors[entry.name])
        return engine

    @property
    def analysed_size(self) -> int:
        """The largest image side any loaded entry analyses at (0 without entries)."""
        return max((int(a.entry.info.get("image_size", 0)) for a in self.analyzers.values()), default=0)

    @property
    def prompts(self) -> dict[str, str]:
        """What each loaded entry that takes the query's prompt does with it (:data:`PROMPT_REQUIRED` or
        :data:`PROMPT_OPTIONAL`), by name."""
        return {n: a.prompt_use for n, a in self.analyzers.items() if a.prompt_use is not None}

    @property
    def prompted(self) -> list[str]:
        """The loaded entries that need each query's prompt (those attributing to a text-to-image model)."""
        return [n for n, use in self.prompts.items() if use == PROMPT_REQUIRED]

    def check_prompt(self, prompt: str | None) -> None:
        """Refuse a query whose prompt an entry needs and is missing, or is longer than its tokenizer takes.

        Raises:
            PromptRequiredError: No prompt, and some entry needs one (the entries are named).
            PromptTooLongError: The prompt does not fit an entry's tokenizer.
        """
        prompted = self.prompted
        if prompted and not (prompt and prompt.strip()):
            raise PromptRequiredError(
                f"{', '.join(map(repr, prompted))} attribute{'s' if len(prompted) == 1 else ''} to a text-to-image "
                "model and need the query's prompt: send it in form field 'prompt' (e.g. curl -F file=@image.png "
                "-F 'prompt=a photo of a horse' URL)."
            )
        for name in prompted:
            analyzer = self.analyzers[name]
            assert isinstance(analyzer, _TRAKAnalyzer)
            check_prompts(analyzer.pipeline.tokenizer, [str(prompt)], option="prompt")

    def analyze(self, image: Image.Image, prompt: str | None = None) -> dict[str, Any]:
        """Ask every loaded entry about ``image``: ``{"entries": [{"name", "kind", ...answer}], "unavailable": {...}}``.

        An entry that fails on this image answers ``{"error": reason}``; the others still answer.

        Args:
            image: The query image.
            prompt: The query's prompt (needed by entries of a text-to-image model, ignored by the others).

        Raises:
            PromptRequiredError: See :meth:`check_prompt` (before any entry runs).
            PromptTooLongError: See :meth:`check_prompt`.
        """
        self.check_prompt(prompt)
        answers = []
        with self._lock, torch.no_grad():
            for name, analyzer in self.analyzers.items():
                answer: dict[str, Any] = {"name": name, "kind": analyzer.entry.kind}
                try:
                    answer.update(analyzer.analyze(image, prompt))
                except GenprovError as err:
                    answer["error"] = str(err)
                except Exception as err:  # a bug in one entry must not hide the other answers
                    log.exception("entry %r failed on an image", name)
                    answer["error"] = f"this entry failed on the image ({_reason(err)}); the server logged it"
                answers.append(answer)
        return {"entries": answers, "unavailable": dict(self.errors)}


class BusyError(GenprovError):
    """Every worker is busy and the queue is full; ``retry_after`` is an estimate in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class LoadedWorkspace:
    """One reading of the workspace: its entries loaded once per worker.

    Attributes:
        workspace: The opened workspace.
        token: SHA-256 of the manifest bytes this reading came from (changes whenever the entries change).
        loaded: Entries that loaded.
        errors: Entries that failed to load, with the reason.
        analysed_size: The largest image side any loaded entry analyses at.
        prompts: The loaded entries that take the query's prompt, with what they do with it
            (:attr:`ProvenanceEngine.prompts`).
        engines: The free engines (one per worker thread).
    """

    workspace: Workspace
    token: str
    loaded: tuple[str, ...]
    errors: dict[str, str]
    analysed_size: int
    prompts: dict[str, str]
    engines: queue.SimpleQueue[ProvenanceEngine] = field(repr=False)


@dataclass(frozen=True)
class Timing:
    """How long one request waited for a worker and how long its analysis took, in seconds."""

    queued_s: float
    analysis_s: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready, rounded to milliseconds."""
        return {"queued_s": round(self.queued_s, 3), "analysis_s": round(self.analysis_s, 3)}


def _manifest_stat(folder: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(folder / MANIFEST)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class AnalysisPool:
    """Analyses off the event loop: ``workers`` threads, each with its own engine, behind a bounded queue.

    At most ``workers + queue_size`` requests are admitted at once (:meth:`slot`); more raise
    :class:`BusyError`. :meth:`refresh` re-reads the workspace when its manifest changed (a cheap ``stat``
    per call), so a removed or replaced entry never answers again.

    Args:
        workspace: The opened workspace.
        workers: Worker threads (each loads every entry once: memory grows with it).
        queue_size: Admitted requests that may wait for a worker.
    """

    def __init__(
        self, workspace: Workspace, *, workers: int = DEFAULT_WORKERS, queue_size: int = DEFAULT_QUEUE
    ) -> None:
        for name, flag, value, low in (("workers", "--workers", workers, 1), ("queue_size", "--queue", queue_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} ({flag}) must be an integer >= {low}; got {value!r}.")
        self.workers = workers
        self.capacity = workers + queue_size
        self._folder = workspace.folder
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="genprov-analysis")
        self._reload_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._mean_s: float | None = None
        self._stat = _manifest_stat(self._folder)
        self._tried = time.monotonic()
        self.reload_error: str | None = None
        self.current = self._load(workspace)

    def _load(self, workspace: Workspace) -> LoadedWorkspace:
        token = hashlib.sha256((workspace.folder / MANIFEST).read_bytes()).hexdigest()
        engines = [ProvenanceEngine.load(workspace) for _ in range(self.workers)]
        free: queue.SimpleQueue[ProvenanceEngine] = queue.SimpleQueue()
        for engine in engines:
            free.put(engine)
        first = engines[0]
        return LoadedWorkspace(
            workspace, token, tuple(first.analyzers), dict(first.errors), first.analysed_size, first.prompts, free
        )

    # ------------------------------------------------------------------------------------ workspace

    def stale(self) -> bool:
        """Whether :meth:`refresh` has work to do (the manifest changed, or the last reload failed)."""
        if self.reload_error is not None:
            return time.monotonic() - self._tried >= _RELOAD_RETRY_S or _manifest_stat(self._folder) != self._stat
        return _manifest_stat(self._folder) != self._stat

    def refresh(self) -> LoadedWorkspace:
        """The current reading of the workspace, re-read first when :meth:`stale`.

        Raises:
            CheckpointError: The changed workspace cannot be opened (retried on later calls).
        """
        with self._reload_lock:
            if self.stale():
                stat, self._tried = _manifest_stat(self._folder), time.monotonic()
                try:
                    workspace = Workspace.open(self._folder)
                    token = hashlib.sha256((self._folder / MANIFEST).read_bytes()).hexdigest()
                    if token != self.current.token:
                        self.current = self._load(workspace)
                    self.reload_error = None
                except (GenprovError, OSError) as err:
                    self.reload_error = (
                        f"The workspace {self._folder} changed and cannot be opened ({_reason(err)}); "
                        "fix it with 'genprov workspace check' / 'genprov workspace remove NAME'."
                    )
                    log.warning("%s", self.reload_error)
                self._stat = stat
            if self.reload_error is not None:
                raise CheckpointError(self.reload_error)
            return self.current

    # ---------------------------------------------------------------------------------------- queue

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``workers + queue_size`` places for a request (raises :class:`BusyError` if none)."""
        with self._count_lock:
            if self._admitted >= self.capacity:
                waiting = self._admitted - self.workers
                retry = math.ceil((self._mean_s or 1.0) * (waiting + 1) / self.workers)
                raise BusyError(
                    f"The service is busy ({self._admitted} requests running or queued, the most it takes); "
                    f"retry in about {retry} s.",
                    retry_after=min(max(retry, 1), 3600),
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._admitted -= 1

    async def run(self, task: Callable[[ProvenanceEngine, LoadedWorkspace], T]) -> tuple[T, Timing]:
        """Run ``task(engine, reading)`` on a worker thread (call inside :meth:`slot`); its value and timing."""
        reading = self.current
        submitted = time.perf_counter()

        def job() -> tuple[T, Timing]:
            started = time.perf_counter()
            with self._count_lock:
                self._running += 1
            engine = reading.engines.get()  # never waits: at most `workers` jobs run at once
            try:
                value = task(engine, reading)
            finally:
                reading.engines.put(engine)
                took = time.perf_counter() - started
                with self._count_lock:
                    self._running -= 1
                    self._mean_s = took if self._mean_s is None else 0.8 * self._mean_s + 0.2 * took
            return value, Timing(queued_s=started - submitted, analysis_s=took)

        return await asyncio.wrap_future(self._executor.submit(job))

    def describe(self) -> dict[str, Any]:
        """Workers, running and waiting requests (for ``/health``)."""
        with self._count_lock:
            return {
                "workers": self.workers,
                "running": self._running,
                "waiting": self._admitted - self._running,
                "capacity": self.capacity,
            }

    def close(self) -> None:
        """Stop the workers (queued analyses are cancelled)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
