"""Peer libraries driven the same way by several benchmarks: traker's featurize-then-score loop."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["traker_run"]


def traker_run(
    model: Any,
    task: Any,
    train_batches: Sequence[tuple[Any, ...]],
    query_batches: Sequence[tuple[Any, ...]],
    *,
    k: int,
    damping: float,
    before: Callable[[Any], None] | None = None,
) -> tuple[float, np.ndarray]:
    """Featurize the training batches with traker's ``TRAKer`` (CPU, float32) and score the query batches.

    Args:
        model: The module whose parameters traker differentiates.
        task: traker ``AbstractModelOutput`` instance (the output function).
        train_batches: Training batches in order (tuples of tensors, first dimension the examples).
        query_batches: Query batches in order.
        k: Projection dimension.
        damping: Absolute lambda on genprov's scale (traker divides features by ``sqrt(n_params)``).
        before: Called with the ``TRAKer`` after its checkpoint is loaded and before the timed featurization
            (a check or a warm-up).

    Returns:
        ``(seconds of featurization, (n_queries, n_train) float64 scores)``.
    """
    from trak import TRAKer

    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(len(b[0]) for b in train_batches)
    n_queries = sum(len(b[0]) for b in query_batches)
    with tempfile.TemporaryDirectory() as folder:
        traker = TRAKer(
            model=model,
            task=task,
            train_set_size=n_train,
            save_dir=folder,
            device="cpu",
            proj_dim=k,
            use_half_precision=False,
            lambda_reg=damping / n_params,  # traker divides features by sqrt(n_params)
            logging_level=40,
        )
        start = time.perf_counter()
        traker.load_checkpoint(model.state_dict(), model_id=0)
        if before is not None:
            before(traker)
            start = time.perf_counter()
        for batch in train_batches:
            traker.featurize(batch=batch, num_samples=len(batch[0]))
        traker.finalize_features()
        seconds = time.perf_counter() - start
        traker.start_scoring_checkpoint("q", model.state_dict(), model_id=0, num_targets=n_queries)
        for batch in query_batches:
            traker.score(batch=batch, num_samples=len(batch[0]))
        scores = np.asarray(traker.finalize_scores(exp_name="q"), dtype=np.float64).T
    return seconds, scores
