"""A feature index: exact (and optionally FAISS) nearest-neighbour search over memory-mapped features.

A :class:`FeatureIndex` is a folder::

    index/
      index.json              dim, metric, spec, the list of segments (atomic JSON)
      segments/000000/        a FeatureStore (manifest.json + features.npy memmap): rows 0..n0-1
      segments/000001/        rows added later by FeatureIndex.add (n0..n0+n1-1)
      faiss-<kind>.index      optional FAISS index (faiss.write_index; rebuilt when rows were added since)

Rows are only ever appended, one segment per :meth:`FeatureIndex.add` / :meth:`FeatureIndex.add_computed`
call, so adding never rewrites existing data. A segment filled by :meth:`FeatureIndex.add_computed` is
written shard by shard (each shard flushed before it is marked done) and resumes after a crash: calling
it again with the same ``key`` and row count recomputes only the missing shards.

Search (Wang et al., ICCV 2023, "Evaluating data attribution for text-to-image models", retrieval by
feature similarity):

* **Exact** (default): the query matrix is multiplied with the memory-mapped features chunk by chunk
  (``chunk_rows`` rows at a time, so memory stays bounded for millions of rows); a running top-k is
  merged per chunk. :meth:`FeatureIndex.scores` returns the full exact (n_queries, n_rows) matrix, which
  mAP and the soft-attribution denominator need. With ``metric="cosine"`` rows are L2-normalised when
  they are added and queries when they are searched, so scores are cosine similarities in [-1, 1].
* **FAISS** (``backend="faiss"``, extra ``genprov[faiss]``): an HNSW (or IVF / flat) index proposes
  ``n_candidates`` rows per query, which are then re-scored exactly from the memmap and re-ranked, so the
  returned scores are always exact (only recall can be lost). Without ``faiss-cpu`` installed this raises
  :class:`~genprov.exceptions.MissingDependencyError` with the pip command.
* **Compressed** (``kind="ivfpq"``): an ``IndexIVFPQ`` (Jegou et al., TPAMI 2011, "Product quantization for
  nearest neighbor search") keeps ``pq_m`` bytes of code + an 8-byte id per row (``dim / 8`` sub-quantizers
  of 8 bits by default: 72 bytes per 512-d row instead of 2,048), so the index of a 10M-row store fits in
  memory while the features stay on disk; its candidates are re-scored exactly from the memmap as above.
  Coarse and PQ k-means are seeded (``seed``), so two builds are byte-identical.

The saved FAISS index records its kind, row count and build settings in ``index.json``; :meth:`FeatureIndex.
build_faiss` reuses a saved index with the same ones and rebuilds otherwise. A search never writes: a stale
index (rows added since) is rebuilt in memory with the saved settings, and an unreadable file is refused
with the fix. ``n_probe`` (IVF lists visited) and ``n_candidates`` (rows re-ranked) are search settings.

Ties: scores are compared in float32 (``precision="float64"`` for float64); among equal scores the
lower row index comes first within the candidates each chunk keeps.

Example:
    >>> index = FeatureIndex.create("runs/index", dim=512, metric="cosine")  # doctest: +SKIP
    >>> index.add(train_features)  # doctest: +SKIP
    >>> rows, scores = index.search(query_features, k=10)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genprov.config import is_positive_int
from genprov.exceptions import ConfigError, DataError, MissingDependencyError, StoreMismatchError
from genprov.storage.feature_store import FeatureStore
from genprov.storage.manifest import spec_differences
from genprov.utils.artifacts import INCOMPLETE_INDEX, check_output_folder
from genprov.utils.io import atomic_write_json, read_json
from genprov.utils.progress import progress

__all__ = [
    "FAISS_KINDS",
    "INDEX_FILE",
    "METRICS",
    "FeatureIndex",
    "exact_scores",
    "exact_search",
    "import_faiss",
    "normalize_rows",
]

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
#: Similarity measures: ``"cosine"`` (rows and queries L2-normalised) or ``"inner-product"`` (raw dot products).
METRICS = ("cosine", "inner-product")
#: FAISS index kinds for candidate generation: ``"hnsw"`` (graph), ``"ivf"`` (inverted lists), ``"ivfpq"``
#: (inverted lists of product-quantized codes: compressed), ``"flat"``.
FAISS_KINDS = ("hnsw", "ivf", "ivfpq", "flat")
#: Bits per product-quantizer code of ``"ivfpq"`` (256 centroids per sub-quantizer).
PQ_BITS = 8
#: The IVF kinds (``n_probe`` applies to them).
_IVF_KINDS = ("ivf", "ivfpq")
_FORMAT = 1
_KIND = "feature-index"
_DEFAULT_CHUNK = 65536
_PRECISIONS = {"float32": torch.float32, "float64": torch.float64}

Block = tuple[int, np.ndarray]


def import_faiss() -> Any:
    """Import ``faiss`` or raise :class:`MissingDependencyError` with the pip command."""
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError("faiss-cpu", "faiss", "FAISS search") from None
    return faiss


def normalize_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows of ``x`` divided by their L2 norm (all-zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def default_candidates(kind: str, k: int) -> int:
    """FAISS candidates re-ranked per query when none are given: ``max(4 k, 64)``, and ``max(100 k, 1000)`` for
    ``"ivfpq"``.

    Uncompressed candidates (HNSW, IVF-Flat) are ordered by exact distances, so a few times ``k`` suffice. PQ codes
    cannot order near-ties: at 10M x 512 rows (``benchmarks/bench_similarity_scale.py``) recall@10 was .535 with
    100 re-ranked candidates and .937 with 1,000, whatever ``n_probe``.
    """
    return max(100 * k, 1000) if kind == "ivfpq" else max(4 * k, 64)


def _as_matrix(x: np.ndarray | Tensor, name: str, dim: int | None = None) -> Tensor:
    t = x.detach().cpu() if isinstance(x, Tensor) else torch.from_numpy(np.array(x))
    if t.ndim != 2:
        raise DataError(f"{name} must be a 2-D (n, d) array of features; got shape {tuple(t.shape)}.")
    if dim is not None and t.shape[1] != dim:
        raise DataError(
            f"{name} must have {dim} columns (the index's feature dimension); got shape {tuple(t.shape)}. "
            "Use the same feature extractor (and image size) for the index and the queries."
        )
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise DataError(f"{name} contains NaN or infinite values; featurize again.")
    return t


def _check_k(k: int, n_rows: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_rows:
        raise ConfigError(f"k must be an integer in [1, {n_rows}] (the number of indexed rows); got {k!r}.")
    return int(k)


def _merge_top_k(best_s: Tensor | None, best_i: Tensor | None, s: Tensor, i: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Merge candidate (scores, indices) into the running top-k: descending score, then ascending index."""
    if best_s is not None and best_i is not None:
        s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
    order = torch.sort(i, dim=1, stable=True).indices
    s, i = torch.gather(s, 1, order), torch.gather(i, 1, order)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(s, 1, order), torch.gather(i, 1, order)


def _chunk_tensor(array: np.ndarray, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """Rows ``start..stop-1`` of ``array`` as a tensor; a float32 chunk read as float32 is not copied.

    Copying every chunk of a memmap before the matmul doubled the memory traffic of a search (which is
    memory-bound for a few queries): a single query was 2-3x slower than one in-memory matmul.
    """
    part = np.asarray(array[start:stop])
    if part.dtype == np.float32 and dtype == torch.float32 and part.flags.c_contiguous:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only memmap: the tensor is only read
            return torch.from_numpy(part)
    return torch.from_numpy(np.array(part)).to(dtype)


def exact_search(
    queries: Tensor,
    blocks: Iterator[Block] | Sequence[Block],
    k: int,
    *,
    chunk_rows: int = _DEFAULT_CHUNK,
    precision: str = "float32",
) -> tuple[Tensor, Tensor]:
    """Exact top-k by inner product over row blocks, reading ``chunk_rows`` rows at a time.

    Args:
        queries: (n_q, d) query features (already normalised for cosine).
        blocks: ``(first row index, (n_b, d) array)`` pairs, e.g. memmapped segments.
        k: Neighbours per query (at most the total number of rows).
        chunk_rows: Rows multiplied at once (bounds memory to ``n_q * chunk_rows`` scores).
        precision: ``"float32"`` or ``"float64"`` arithmetic.

    Returns:
        ``(indices (n_q, k) int64, scores (n_q, k))`` sorted by descending score.
    """
    dtype = _PRECISIONS[precision]
    q = queries.to(dtype)
    best_s: Tensor | None = None
    best_i: Tensor | None = None
    total = 0
    for offset, array in blocks:
        for start in range(0, array.shape[0], chunk_rows):
            rows = _chunk_tensor(array, start, start + chunk_rows, dtype)
            s = q @ rows.T
            kk = min(k, s.shape[1])
            top_s, top_i = torch.topk(s, kk, dim=1, sorted=False)
            best_s, best_i = _merge_top_k(best_s, best_i, top_s, top_i + offset + start, k)
            total += rows.shape[0]
    if best_s is None or best_i is None or total < k:
        raise DataError(f"cannot return k={k} neighbours from {total} rows; add features first or lower k.")
    return best_i.to(torch.int64), best_s


def exact_scores(
    queries: Tensor,
    blocks: Iterator[Block] | Sequence[Block],
    n_rows: int,
    *,
    chunk_rows: int = _DEFAULT_CHUNK,
    precision: str = "float32",
) -> Tensor:
    """Full exact (n_q, n_rows) inner products over row blocks, ``chunk_rows`` rows at a time."""
    dtype = _PRECISIONS[precision]
    q = queries.to(dtype)
    out = torch.empty(q.shape[0], n_rows, dtype=dtype)
    for offset, array in blocks:
        for start in range(0, array.shape[0], chunk_rows):
            rows = _chunk_tensor(array, start, start + chunk_rows, dtype)
            out[:, offset + start : offset + start + rows.shape[0]] = q @ rows.T
    return out


class FeatureIndex:
    """Append-only (n_rows, dim) features on disk with exact and FAISS search.

    Build with :meth:`create` (new or reopen) or :meth:`open`; the constructor only records the path.

    Args:
        path: The index folder.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._meta: dict[str, Any] | None = None
        self._stores: dict[str, FeatureStore] = {}
        # memmaps of complete segments (append-only: a complete segment never changes), kept open so that
        # repeated searches do not map (and page-fault) the whole file again each time
        self._arrays: dict[str, np.ndarray] = {}
        self._faiss: Any = None
        self._faiss_key: tuple[Any, ...] | None = None

    def __repr__(self) -> str:
        if self._meta is None:
            return f"FeatureIndex({str(self.path)!r}, unopened)"
        return f"FeatureIndex({str(self.path)!r}, {self.n_rows} rows x {self.dim}, {self.metric})"

    # ------------------------------------------------------------------------------------ creating

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        dim: int,
        metric: str = "cosine",
        spec: Mapping[str, Any] | None = None,
    ) -> FeatureIndex:
        """Create an empty index, or reopen an existing one with the same ``dim``, ``metric`` and ``spec``.

        Args:
            path: Index folder (created).
            dim: Feature dimension.
            metric: One of :data:`METRICS`.
            spec: JSON settings that determine the features (extractor, weights, ...); compared on reopen.

        Raises:
            StoreMismatchError: The folder holds an index with another dim, metric or spec (names the fields).
            ConfigError: On an invalid ``dim`` or ``metric``, or a path that is a file or holds another kind
                of artefact.
        """
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"dim must be a positive integer (the feature dimension); got {dim!r}.")
        if metric not in METRICS:
            raise ConfigError(f"metric must be one of {METRICS}; got {metric!r}.")
        index = cls(path)
        wanted = {"dim": int(dim), "metric": metric, "spec": dict(spec or {})}
        check_output_folder(
            index.path, accept={"feature index", "similarity index", INCOMPLETE_INDEX}, option="--store"
        )
        if (index.path / INDEX_FILE).is_file():
            index._load_meta()
            saved = {key: index.meta[key] for key in ("dim", "metric", "spec")}
            diffs = spec_differences(saved, wanted)
            if diffs:
                shown = "; ".join(
                    f"{name}: index has {old!r}, asked for {new!r}" for name, (old, new) in list(diffs.items())[:8]
                )
                raise StoreMismatchError(
                    f"{index.path} holds an index built with other settings ({shown}). Use another folder, or "
                    "delete this one to rebuild it."
                )
            return index
        index.path.mkdir(parents=True, exist_ok=True)
        index._meta = {"format": _FORMAT, "kind": _KIND, **wanted, "segments": []}
        index._save_meta()
        return index

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FeatureIndex:
        """Open an existing index.

        Raises:
            DataError: No index at ``path``, or its ``index.json`` is unreadable.
        """
        index = cls(path)
        index._load_meta()
        return index

    def _load_meta(self) -> None:
        file = self.path / INDEX_FILE
        if not file.is_file():
            raise DataError(
                f"No feature index at {self.path}: {file} is missing. Build one first "
                "(FeatureIndex.create + add, or SimilarityAttributor.fit(train, store=...))."
            )
        try:
            meta = read_json(file)
        except ValueError as err:  # unreadable (OSError) is no corruption: reported as such
            raise DataError(
                f"Cannot read {file}: {err}. The file is corrupted; delete the folder and rebuild."
            ) from err
        if not isinstance(meta, dict) or meta.get("kind") != _KIND or "segments" not in meta:
            raise DataError(f"{file} is not a genprov feature index; delete the folder and rebuild.")
        if int(meta.get("format", 0)) > _FORMAT:
            raise DataError(f"{file} was written by a newer genprov (format {meta['format']}); upgrade genprov.")
        self._meta = meta

    def _save_meta(self) -> None:
        atomic_write_json(self.path / INDEX_FILE, self.meta)

    # ------------------------------------------------------------------------------------ state

    @property
    def meta(self) -> dict[str, Any]:
        """The content of ``index.json``."""
        if self._meta is None:
            raise DataError(f"FeatureIndex {self.path} is not opened; use FeatureIndex.create or FeatureIndex.open.")
        return self._meta

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return int(self.meta["dim"])

    @property
    def metric(self) -> str:
        """``"cosine"`` or ``"inner-product"``."""
        return str(self.meta["metric"])

    @property
    def spec(self) -> dict[str, Any]:
        """The settings the features were computed with."""
        spec: dict[str, Any] = self.meta["spec"]
        return spec

    @property
    def segments(self) -> list[dict[str, Any]]:
        """``[{"name", "n_rows", "key"}]`` in row order."""
        segments: list[dict[str, Any]] = self.meta["segments"]
        return segments

    @property
    def n_rows(self) -> int:
        """Number of rows in complete segments (what search sees)."""
        return sum(int(s["n_rows"]) for s in self.segments if self._store(s).is_complete)

    @property
    def is_complete(self) -> bool:
        """Whether every segment is fully written."""
        return all(self._store(s).is_complete for s in self.segments)

    def _store(self, segment: Mapping[str, Any]) -> FeatureStore:
        name = str(segment["name"])
        if name not in self._stores:
            self._stores[name] = FeatureStore.open(self.path / "segments" / name)
        store = self._stores[name]
        store.refresh()
        return store

    # ------------------------------------------------------------------------------------ adding

    def _prepare_rows(self, x: np.ndarray | Tensor, name: str) -> Tensor:
        t = _as_matrix(x, name, self.dim).to(torch.float32)
        return normalize_rows(t) if self.metric == "cosine" else t

    def add(self, features: np.ndarray | Tensor, *, key: str = "", shard_size: int = 65536) -> range:
        """Append rows (normalised first for cosine) as a new segment.

        Args:
            features: (n, dim) features.
            key: Free-form label of the segment (e.g. a data fingerprint).
            shard_size: Rows per shard of the segment's store.

        Returns:
            The row indices the new rows got.
        """
        rows = _as_matrix(features, "features", self.dim)
        if rows.shape[0] == 0:
            raise DataError("features has no rows; nothing to add.")
        return self.add_computed(rows.shape[0], lambda a, b: rows[a:b], key=key, shard_size=shard_size)

    def add_computed(
        self,
        n_rows: int,
        compute: Callable[[int, int], np.ndarray | Tensor],
        *,
        key: str = "",
        shard_size: int = 1024,
        show_progress: bool | None = None,
        desc: str = "indexing",
    ) -> range:
        """Append ``n_rows`` rows computed shard by shard; resumable.

        ``compute(start, stop)`` returns the (stop - start, dim) features of rows ``start..stop-1`` of this
        batch (numbered from 0). Each shard is flushed before it is marked done; if the last segment is
        unfinished and was started with the same ``key`` and ``n_rows``, only its missing shards are
        computed.

        Returns:
            The index rows the new rows got.

        Raises:
            StoreMismatchError: The last segment is unfinished and belongs to another ``key`` / size;
                finish it (call again with its data) or drop it with :meth:`drop_incomplete`.
        """
        if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
            raise ConfigError(f"n_rows must be a positive integer; got {n_rows!r}.")
        segments = self.segments
        if segments and not self._store(segments[-1]).is_complete:
            last = segments[-1]
            if last["key"] != key or int(last["n_rows"]) != int(n_rows):
                raise StoreMismatchError(
                    f"{self.path} has an unfinished segment {last['name']} (key {last['key']!r}, "
                    f"{last['n_rows']} rows); asked to add key {key!r} with {n_rows} rows. Re-run the build that "
                    "started it to finish it, or call FeatureIndex.drop_incomplete() to discard it."
                )
            segment = last
            logger.info("%s: resuming segment %s", self.path, segment["name"])
        else:
            segment = {"name": f"{len(segments):06d}", "n_rows": int(n_rows), "key": key}
            FeatureStore.create(
                self.path / "segments" / segment["name"],
                n_rows=int(n_rows),
                arrays={"features": self.dim},
                spec={"index_spec": self.spec, "metric": self.metric, "key": key},
                shard_size=shard_size,
                resume=False,
            )
            segments.append(segment)
            self._save_meta()
        first = sum(int(s["n_rows"]) for s in segments[:-1])
        store = self._store(segment)
        missing = store.missing_shards()
        for shard in progress(missing, desc=desc, total=len(missing), show=show_progress):
            start, stop = store.shard_bounds(shard)
            values = self._prepare_rows(compute(start, stop), f"rows {start}..{stop - 1}")
            if values.shape[0] != stop - start:
                raise DataError(f"compute({start}, {stop}) returned {values.shape[0]} rows; expected {stop - start}.")
            store.write_shard(shard, {"features": values})
        return range(first, first + int(n_rows))

    def drop_incomplete(self) -> bool:
        """Delete an unfinished last segment (returns whether one was dropped)."""
        segments = self.segments
        if not segments or self._store(segments[-1]).is_complete:
            return False
        last = segments.pop()
        self._save_meta()
        self._stores.pop(str(last["name"]), None)
        self._arrays.pop(str(last["name"]), None)
        shutil.rmtree(self.path / "segments" / str(last["name"]), ignore_errors=True)
        return True

    # ------------------------------------------------------------------------------------ reading

    def blocks(self) -> Iterator[Block]:
        """``(first row, read-only (n_b, dim) memmap)`` of every segment.

        Raises:
            DataError: If the index is empty or a segment is unfinished (names the fix).
        """
        if not self.segments:
            raise DataError(
                f"The feature index at {self.path} is empty; add features first "
                "(FeatureIndex.add, or SimilarityAttributor.fit(train, store=...))."
            )
        offset = 0
        for segment in self.segments:
            name = str(segment["name"])
            array = self._arrays.get(name)
            if array is None:
                store = self._store(segment)
                if not store.is_complete:
                    raise DataError(
                        f"{self.path}: segment {name} is unfinished ({store.n_done}/{store.n_shards} shards). "
                        "Run the build again to resume it, or call FeatureIndex.drop_incomplete()."
                    )
                array = self._arrays[name] = store.read("features")
            yield offset, array
            offset += int(segment["n_rows"])

    def features(self, rows: Sequence[int] | np.ndarray | Tensor | None = None) -> Tensor:
        """Stored rows as a float32 tensor (all rows when ``rows`` is None; a copy)."""
        blocks = list(self.blocks())
        if rows is None:
            return torch.cat([torch.from_numpy(np.array(a, dtype=np.float32)) for _, a in blocks])
        wanted = np.asarray(rows.cpu().numpy() if isinstance(rows, Tensor) else rows, dtype=np.int64)
        flat = wanted.ravel()
        n = sum(a.shape[0] for _, a in blocks)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise DataError(f"row indices must be in [0, {n}); got values in [{flat.min()}, {flat.max()}].")
        out = np.empty((flat.size, self.dim), dtype=np.float32)
        for offset, array in blocks:
            hit = (flat >= offset) & (flat < offset + array.shape[0])
            if hit.any():
                local = flat[hit] - offset
                order = np.argsort(local, kind="stable")
                out[np.flatnonzero(hit)[order]] = array[local[order]]
        return torch.from_numpy(out).reshape(*wanted.shape, self.dim)

    def prepare_queries(self, queries: np.ndarray | Tensor) -> Tensor:
        """Check (n_q, dim) query features and normalise them for cosine."""
        q = _as_matrix(queries, "queries", self.dim)
        if q.shape[0] == 0:
            raise DataError("queries has no rows; pass at least one query.")
        return normalize_rows(q) if self.metric == "cosine" else q

    # ------------------------------------------------------------------------------------ search

    def scores(
        self, queries: np.ndarray | Tensor, *, chunk_rows: int = _DEFAULT_CHUNK, precision: str = "float32"
    ) -> Tensor:
        """Full exact scores (n_queries, n_rows); higher = more similar (cosine or inner product)."""
        q = self.prepare_queries(queries)
        self._check_precision(precision, chunk_rows)
        blocks = list(self.blocks())
        return exact_scores(q, blocks, self.n_rows, chunk_rows=chunk_rows, precision=precision)

    def search(
        self,
        queries: np.ndarray | Tensor,
        k: int,
        *,
        backend: str = "exact",
        n_candidates: int | None = None,
        kind: str | None = None,
        n_probe: int | None = None,
        chunk_rows: int = _DEFAULT_CHUNK,
        precision: str = "float32",
    ) -> tuple[Tensor, Tensor]:
        """Top-k rows per query.

        Args:
            queries: (n_q, dim) query features (normalised here for cosine).
            k: Neighbours per query, at most :attr:`n_rows`.
            backend: ``"exact"`` (chunked matmul) or ``"faiss"`` (FAISS candidates, exact re-ranking; build
                the FAISS index with :meth:`build_faiss` first, or one is built in memory: with the saved
                index's settings when it is stale, else with defaults).
            n_candidates: FAISS candidates per query before re-ranking (default :func:`default_candidates`:
                ``max(4 k, 64)``, and ``max(100 k, 1000)`` for ``"ivfpq"``, whose compressed codes cannot order
                near-ties).
            kind: FAISS index kind (one of :data:`FAISS_KINDS`; ``None``: the saved one, else ``"hnsw"``).
            n_probe: IVF lists visited per query (``"ivf"`` / ``"ivfpq"``; ``None``: the index's own, set at
                build; at most the number of lists).
            chunk_rows: Rows multiplied at once by the exact backend.
            precision: ``"float32"`` or ``"float64"`` arithmetic for the exact scores.

        Returns:
            ``(indices (n_q, k) int64, scores (n_q, k))``, by descending score; scores are exact either way. A
            query for which FAISS proposes fewer than ``k`` rows is searched exactly.
        """
        q = self.prepare_queries(queries)
        self._check_precision(precision, chunk_rows)
        blocks = list(self.blocks())
        k = _check_k(k, self.n_rows)
        if backend == "exact":
            return exact_search(q, blocks, k, chunk_rows=chunk_rows, precision=precision)
        if backend != "faiss":
            raise ConfigError(f"backend must be 'exact' or 'faiss'; got {backend!r}.")
        if n_candidates is not None and not is_positive_int(n_candidates):
            raise ConfigError(f"n_candidates must be a positive integer or None; got {n_candidates!r}.")
        faiss_index, kind = self._faiss_index(kind)
        m = default_candidates(kind, k) if n_candidates is None else int(n_candidates)
        m = min(max(m, k), self.n_rows)
        params = self._search_params(faiss_index, kind, n_probe)
        _, candidates = faiss_index.search(np.ascontiguousarray(q.numpy(), dtype=np.float32), m, params=params)
        cand = torch.from_numpy(candidates.astype(np.int64))
        valid = cand >= 0
        safe = torch.where(valid, cand, torch.zeros_like(cand))
        rows = self.features(safe).to(_PRECISIONS[precision])  # (n_q, m, dim)
        exact = torch.einsum("qd,qmd->qm", q.to(rows.dtype), rows)
        exact = torch.where(valid, exact, torch.full_like(exact, -math.inf))
        # FAISS may return a row twice (rare, IVF/HNSW); keep the first occurrence only
        dup = torch.zeros_like(valid)
        sorted_c, order = torch.sort(safe, dim=1, stable=True)
        repeat = torch.zeros_like(valid)
        repeat[:, 1:] = sorted_c[:, 1:] == sorted_c[:, :-1]
        dup.scatter_(1, order, repeat)
        exact = torch.where(dup, torch.full_like(exact, -math.inf), exact)
        top_s, top_i = _merge_top_k(None, None, exact, safe, k)
        short = torch.isinf(top_s).any(dim=1)  # FAISS found fewer than k rows (e.g. sparse IVF lists)
        if bool(short.any()):
            fallback_i, fallback_s = exact_search(q[short], blocks, k, chunk_rows=chunk_rows, precision=precision)
            top_i[short], top_s[short] = fallback_i, fallback_s.to(top_s.dtype)
        return top_i, top_s

    @staticmethod
    def _check_precision(precision: str, chunk_rows: int) -> None:
        if precision not in _PRECISIONS:
            raise ConfigError(f"precision must be one of {tuple(_PRECISIONS)}; got {precision!r}.")
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be a positive integer; got {chunk_rows!r}.")

    # ------------------------------------------------------------------------------------ FAISS

    def build_faiss(
        self,
        kind: str = "hnsw",
        *,
        hnsw_m: int = 32,
        ef_search: int = 128,
        n_lists: int | None = None,
        n_probe: int = 16,
        pq_m: int | None = None,
        train_rows: int | None = None,
        seed: int = 0,
        save: bool = True,
        rebuild: bool = False,
    ) -> Any:
        """Build (and by default save into the folder) a FAISS index over the stored rows.

        Args:
            kind: One of :data:`FAISS_KINDS`: ``"hnsw"`` (``IndexHNSWFlat``), ``"ivf"``
                (``IndexIVFFlat``, k-means seeded by ``seed``), ``"ivfpq"`` (``IndexIVFPQ``: ``pq_m`` codes of
                :data:`PQ_BITS` bits per row, coarse and PQ k-means seeded by ``seed``), ``"flat"`` (exact
                brute force).
            hnsw_m: HNSW graph degree.
            ef_search: HNSW search breadth (higher = better recall, slower).
            n_lists: IVF lists (default ``4 sqrt(n_rows)``).
            n_probe: IVF lists visited per query (the index's default; a search may set its own).
            pq_m: ``"ivfpq"`` sub-quantizers, a divisor of ``dim`` (default: the largest divisor of ``dim``
                up to ``dim / 8``, i.e. ``dim / 8`` bytes per row when 8 divides ``dim``).
            train_rows: Rows (a seeded sample) the IVF k-means trains on (default ``"ivf"``: ``256 n_lists``;
                ``"ivfpq"``: ``max(64 n_lists, 16384)``; at most ``n_rows``).
            seed: Seed of the training sample and the k-means.
            save: Write ``faiss-<kind>.index`` next to ``index.json`` (reloaded by later searches while the
                row count is unchanged) and record its kind, row count, settings and size in ``index.json``.
            rebuild: Build even when the saved index has this kind, row count and settings (by default it is
                loaded instead; an unreadable one is rebuilt).

        Returns:
            The FAISS index object.

        Raises:
            ConfigError: An unknown kind, a ``pq_m`` that does not divide ``dim``, or an ``"ivfpq"`` index over
                fewer rows than its codebooks need.
        """
        faiss = import_faiss()
        if kind not in FAISS_KINDS:
            raise ConfigError(f"kind must be one of {FAISS_KINDS}; got {kind!r}.")
        settings = _build_settings(kind, hnsw_m=hnsw_m, n_lists=n_lists, pq_m=pq_m, train_rows=train_rows, seed=seed)
        n = self.n_rows
        record = {"kind": kind, "n_rows": n, "settings": settings}
        saved = self.meta.get("faiss")
        if save and not rebuild and saved and {key: saved.get(key) for key in record} == record:
            try:
                index = self._read_faiss(saved)
            except DataError as err:
                logger.warning("%s; rebuilding it", err)
            else:
                _set_search_defaults(index, kind, ef_search=ef_search, n_probe=n_probe)
                self._faiss, self._faiss_key = index, (kind, n)
                return index
        blocks = list(self.blocks())
        index = self._new_faiss(faiss, kind, settings)
        _set_search_defaults(index, kind, ef_search=ef_search, n_probe=n_probe)
        for _, array in blocks:
            for start in range(0, array.shape[0], _DEFAULT_CHUNK):
                index.add(np.ascontiguousarray(array[start : start + _DEFAULT_CHUNK], dtype=np.float32))
        if save:
            file = self.path / f"faiss-{kind}.index"
            faiss.write_index(index, str(file))
            self.meta["faiss"] = {**record, "bytes": file.stat().st_size}
            self._save_meta()
        self._faiss, self._faiss_key = index, (kind, n)
        return index

    def _new_faiss(self, faiss: Any, kind: str, settings: Mapping[str, Any]) -> Any:
        """An empty (trained, for the IVF kinds) FAISS index of ``kind`` over inner products."""
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "hnsw":
            return faiss.IndexHNSWFlat(self.dim, int(settings["hnsw_m"]), ip)
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        n = self.n_rows
        lists = int(settings["n_lists"]) if settings["n_lists"] is not None else max(1, min(n, int(4 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(self.dim)
        seed = int(settings["seed"])
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, self.dim, lists, ip)
            wanted = 256 * lists
        else:
            pq_m = int(settings["pq_m"]) if settings["pq_m"] is not None else _default_pq_m(self.dim)
            if self.dim % pq_m:
                raise ConfigError(f"pq_m must divide the feature dimension {self.dim}; got {pq_m}.")
            if n < 2**PQ_BITS:
                raise ConfigError(
                    f"an 'ivfpq' index needs at least {2**PQ_BITS} rows to train its {PQ_BITS}-bit codebooks; "
                    f"{self.path} holds {n}. Use kind 'hnsw' (or exact search) for so few rows."
                )
            index = faiss.IndexIVFPQ(quantizer, self.dim, lists, pq_m, PQ_BITS, ip)
            index.pq.cp.seed = seed  # the product quantizer's k-means (faiss's default seed is fixed, 1234)
            wanted = max(64 * lists, 16384)
        index.cp.seed = seed
        size = min(n, int(settings["train_rows"]) if settings.get("train_rows") is not None else wanted)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        index.train(np.ascontiguousarray(self.features(rows).numpy(), dtype=np.float32))
        return index

    def _read_faiss(self, saved: Mapping[str, Any]) -> Any:
        """The saved FAISS index, checked against the rows it must cover.

        Raises:
            DataError: The file is missing, unreadable, or holds another number of rows or dimension.
        """
        faiss = import_faiss()
        file = self.path / f"faiss-{saved['kind']}.index"
        fix = (
            f"delete it and rebuild it (FeatureIndex.build_faiss({saved['kind']!r}), or 'genprov similarity index "
            f"--store {self.path} --search {saved['kind']}' with the index's other options)"
        )
        if not file.is_file():
            raise DataError(f"{self.path / INDEX_FILE} records a FAISS index but {file} is missing; {fix}.")
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as err:  # faiss reports a truncated or foreign file as a C++ exception
            cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(f"{file} is not a readable FAISS index ({cause}); {fix}.") from None
        if int(index.ntotal) != int(saved["n_rows"]) or int(index.d) != self.dim:
            raise DataError(
                f"{file} holds {index.ntotal} rows x {index.d} but {self.path / INDEX_FILE} records "
                f"{saved['n_rows']} x {self.dim}; {fix}."
            )
        return index

    def _faiss_index(self, kind: str | None = None) -> tuple[Any, str]:
        """The FAISS index a search uses and its kind: cached, saved (when current) or built in memory."""
        if kind is not None and kind not in FAISS_KINDS:
            raise ConfigError(f"kind must be one of {FAISS_KINDS} or None; got {kind!r}.")
        n = self.n_rows
        saved: dict[str, Any] = self.meta.get("faiss") or {}
        kind = kind or str(saved.get("kind", "hnsw"))
        if self._faiss is not None and self._faiss_key == (kind, n):
            return self._faiss, kind
        same_kind = saved.get("kind") == kind
        if same_kind and int(saved["n_rows"]) == n:
            self._faiss, self._faiss_key = self._read_faiss(saved), (kind, n)
            return self._faiss, kind
        # in memory only: a search is a read and never writes into the index folder (which may be read-only)
        settings = dict(saved.get("settings") or {}) if same_kind else {}
        logger.info(
            "%s: building a FAISS %s index over %d rows in memory (save one with build_faiss)", self.path, kind, n
        )
        return self.build_faiss(kind, save=False, **settings), kind

    @staticmethod
    def _search_params(index: Any, kind: str, n_probe: int | None) -> Any:
        """FAISS search parameters setting ``n_probe`` for this search only (``None``: the index's own)."""
        if n_probe is None:
            return None
        if not is_positive_int(n_probe):
            raise ConfigError(f"n_probe must be a positive integer or None; got {n_probe!r}.")
        if kind not in _IVF_KINDS:
            raise ConfigError(
                f"n_probe applies to the IVF kinds {_IVF_KINDS}; the FAISS index searched is {kind!r}. "
                "Drop n_probe or search with kind 'ivfpq'."
            )
        faiss = import_faiss()
        return faiss.SearchParametersIVF(nprobe=min(int(n_probe), int(index.nlist)))


def _default_pq_m(dim: int) -> int:
    """The largest divisor of ``dim`` up to ``dim / 8`` (at least 1): ``dim / 8`` bytes per row when 8 divides it."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def _build_settings(kind: str, **values: Any) -> dict[str, Any]:
    """The settings that shape a FAISS index of ``kind`` (recorded; a change rebuilds the saved index)."""
    used = {
        "hnsw": ("hnsw_m",),
        "ivf": ("n_lists", "train_rows", "seed"),
        "ivfpq": ("n_lists", "pq_m", "train_rows", "seed"),
        "flat": (),
    }[kind]
    for name in used:
        value = values[name]
        if name != "seed" and value is not None and not is_positive_int(value):
            raise ConfigError(f"{name} must be a positive integer; got {value!r}.")
    return {name: (None if values[name] is None else int(values[name])) for name in used}


def _set_search_defaults(index: Any, kind: str, *, ef_search: int, n_probe: int) -> None:
    """Set the search breadth a FAISS index uses when a search does not set its own."""
    if kind == "hnsw":
        index.hnsw.efSearch = int(ef_search)
    elif kind in _IVF_KINDS:
        index.nprobe = int(n_probe)
