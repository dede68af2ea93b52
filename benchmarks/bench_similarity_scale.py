"""Similarity search at 10M rows: the compressed IVF-PQ index with exact re-ranking from the memmap, vs exact.

Data: ``n`` synthetic 512-d unit feature vectors (10,000,000; quick: 200,000) around 2,000 seeded cluster
centres, generated block by block (one generator per 65,536-row block: the same rows whatever the chunking)
straight into a :class:`~genprov.storage.FeatureIndex` memmap on disk (float32: 20.5 GB at 10M; written
under ``$TMPDIR``, refused up front when the disk has less free). The rows and the noisy-copy queries are
:mod:`benchmarks.bench_similarity`'s.

Index: ``FeatureIndex.build_faiss("ivfpq")``: ``n_lists = min(4 sqrt(n), 4096)`` inverted lists (4,096 at
10M: the sqrt rule's 12,649 lists would make the single-thread k-means of the build take hours), 64
sub-quantizers of 8 bits (64 bytes of code + an 8-byte id per row instead of 2,048 bytes), k-means on a
seeded sample of ``64 n_lists`` rows, seed 0. Every search re-scores its ``n_candidates`` FAISS candidates
exactly from the memmap, so returned scores are exact; only recall can be lost.

Reported: writing the store, build time, the index's bytes (its ``faiss.write_index`` file) against the
features' (a query process holds the index in memory, the features stay on disk), latency of one query and the
per-query time of a batch of queries for several ``n_probe`` (lists visited) at ``n_candidates = 10 k`` (and
at ``100 k``, deeper re-ranking, and ``k``: the PQ ranking alone; :data:`SETTINGS`), and recall@10 against exact
search on a sample of queries (the exact top-10 of the sample from one chunked pass over the memmap, whose time per
query is the exact reference). FAISS and torch use the same thread count. Timing (:mod:`benchmarks.timing`):
single queries interleaved across the settings query by query, batches (and the exact pass) interleaved three
times, each after one warm-up call; cells are median [min-max], speed-ups ratios of medians, and the load
average read at the end of every round flags the table when its readings spread by more than 0.5.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_similarity import DIM, SHARD, _centres, _recall, _rows
from benchmarks.memory import reset_peak, status_mb
from benchmarks.timing import interleaved, load_note

K = 10
MAX_LISTS = 4096
#: ``(n_probe, n_candidates)`` searched: lists visited, candidates re-scored exactly per query (10 k at every
#: ``n_probe``; 100 k where the lists hold enough true neighbours; k: the PQ ranking alone).
SETTINGS = ((8, 10 * K), (32, 10 * K), (32, 100 * K), (128, 10 * K), (128, 100 * K), (128, K))
SEED = 0


def sizes(quick: bool) -> dict[str, int]:
    """Rows, single queries timed, batch size and exact-search sample of the full and the quick run."""
    if quick:
        return {"n": 200_000, "single": 50, "batch": 200, "sample": 50}
    return {"n": 10_000_000, "single": 200, "batch": 1000, "sample": 200}


def _queries(index: Any, n_q: int, n: int, seed: int) -> np.ndarray:
    """Noisy copies of random stored rows (each has a meaningful top-k), unit length."""
    picked = np.sort(np.random.default_rng([seed, 3]).choice(n, n_q, replace=False))
    noise = np.random.default_rng([seed, 4]).standard_normal((n_q, DIM)).astype(np.float32)
    q = index.features(picked).numpy() + 0.3 / math.sqrt(DIM) * noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def run(quick: bool) -> str:
    """Measure and return a Markdown section (heading, table, notes)."""
    from genprov.storage import FeatureIndex
    from genprov.storage.index import import_faiss
    from genprov.utils.artifacts import ensure_free_space

    faiss = import_faiss()
    faiss.omp_set_num_threads(torch.get_num_threads())
    size = sizes(quick)
    n = size["n"]
    n_lists = min(int(4 * math.sqrt(n)), MAX_LISTS)
    centres = _centres(SEED)
    lines = [
        f"### Compressed similarity search over {n:,} x {DIM} features (IVF-PQ + exact re-ranking, k = {K}, "
        f"{torch.get_num_threads()} thread(s)) (bench_similarity_scale)",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        features_bytes = n * DIM * 4
        ensure_free_space(tmp, int(features_bytes * 1.1), f"the {n:,} x {DIM} benchmark store")
        index = FeatureIndex.create(Path(tmp) / "index", dim=DIM, metric="cosine")
        t0 = time.perf_counter()
        index.add_computed(n, lambda a, b: _rows(a, b, centres, SEED), shard_size=SHARD, show_progress=False)
        write_s = time.perf_counter() - t0

        base = reset_peak()
        t0 = time.perf_counter()
        index.build_faiss("ivfpq", n_lists=n_lists, pq_m=DIM // 8, seed=SEED)
        build_s = time.perf_counter() - t0
        build_peak = status_mb("VmHWM") - base
        index_bytes = int(index.meta["faiss"]["bytes"])

        # a fresh handle loads the saved index as a query process would
        searcher = FeatureIndex.open(Path(tmp) / "index")
        n_q = max(size["single"], size["batch"], size["sample"])
        q = torch.from_numpy(_queries(searcher, n_q, n, SEED))
        searcher.search(q[:1], K, backend="faiss")  # loads the index file

        sample, batch = q[: size["sample"]], q[: size["batch"]]
        settings = {
            f"{n_probe}/{candidates}": {"backend": "faiss", "n_probe": n_probe, "n_candidates": candidates}
            for n_probe, candidates in SETTINGS
        }
        single = interleaved(
            {name: lambda i, st=st: searcher.search(q[i : i + 1], K, **st) for name, st in settings.items()},
            repeats=size["single"],
        )
        batches = interleaved(
            {
                "exact": lambda _: searcher.search(sample, K),  # one chunked pass over the memmap for the sample
                **{name: lambda _, st=st: searcher.search(batch, K, **st) for name, st in settings.items()},
            }
        )
        truth = batches.last("exact")[0]
        exact_per_query = batches.timing("exact", per=len(sample)).scaled(1e3)
        rows: list[dict[str, Any]] = []
        for name, st in settings.items():
            found = searcher.search(sample, K, **st)[0]
            per_query = batches.timing(name, per=len(batch)).scaled(1e3)
            rows.append(
                {
                    "n_probe": st["n_probe"],
                    "re-ranked": st["n_candidates"],
                    f"recall@{K}": _recall(list(found.numpy()), list(truth.numpy())),
                    "single ms": single.timing(name).scaled(1e3).cell(".3g"),
                    f"batch of {size['batch']}: ms/query": per_query.cell(".3g"),
                    "speed-up vs exact": exact_per_query.ratio(per_query),
                }
            )
    columns = list(rows[0])
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Store: {features_bytes / 2**30:.2f} GiB of float32 features written in {write_s:.0f} s. IVF-PQ build "
        f"({n_lists:,} lists, {DIM // 8} x 8-bit codes, k-means on {min(n, 64 * n_lists):,} sampled rows): "
        f"{build_s:.0f} s, peak RSS increase {build_peak:.0f} MiB (memmap pages read included). Index: "
        f"{index_bytes / 2**20:.1f} MiB (its file, which a query process holds in memory; the features stay on "
        f"disk, read through the page cache) = {index_bytes / features_bytes:.1%} of the features. "
        f"Exact search: {exact_per_query.cell('.1f')} ms per query (the {size['sample']} sample queries batched in "
        f"one chunked pass over the memmap); recall@{K} is against it. Single-query latency includes reading the "
        f"re-ranked rows from the memmap (page cache or disk); median [min-max] over {size['single']} queries. "
        f"Batches: median [min-max] of {batches.repeats} interleaved runs after a warm-up each. "
        + load_note(single.load_before, batches.load_after, (*single.load_rounds, *batches.load_rounds))
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(1)
    print(run(quick=True))
