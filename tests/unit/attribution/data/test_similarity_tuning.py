"""Contrastive tuning of frozen features: identity start, InfoNCE, early stopping on held-out mAP, hubness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genprov.attribution.data.mapper import FeatureMapper, TuningConfig, hub_statistics, info_nce_loss, split_classes
from genprov.eval.retrieval import k_occurrence, k_occurrence_skewness, mean_average_precision
from genprov.exceptions import CheckpointError, ConfigError, DataError, NotFittedError

torch.set_num_threads(1)

D, N = 16, 300


def _problem(distortion: float = 2.0):
    """Pool items t_i; a query of exemplar p is a fixed linear distortion of t_p plus noise.

    Tuning sees queries of items 0..149; validation uses held-out items 150..299 (the same pool).
    """
    g = torch.Generator().manual_seed(0)
    pool = F.normalize(torch.randn(N, D, generator=g), dim=1)
    distort = torch.eye(D) + distortion * torch.randn(D, D, generator=g) / D**0.5

    def queries(items: range, reps: int):
        idx = torch.tensor(list(items)).repeat_interleave(reps)
        q = pool[idx] @ distort.T + 0.1 * torch.randn(len(idx), D, generator=g)
        return q, [np.array([int(i)]) for i in idx]

    return pool, queries(range(0, 150), 2), queries(range(150, 300), 1)


def _config(**overrides) -> TuningConfig:
    base = {
        "identity_weight": 1e-3,
        "max_steps": 200,
        "eval_every": 20,
        "batch_size": 32,
        "n_pool_negatives": 64,
        "lr": 1e-2,
        "hidden_dim": 32,
        "patience": 3,
    }
    return TuningConfig(**{**base, **overrides})


def test_hub_statistics_match_eval_and_hand_counts() -> None:
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((40, 30))
    scores[:, 7] += 2.0  # item 7 becomes a hub
    stats = hub_statistics(torch.from_numpy(scores), 5, items=[7, 8])
    assert stats["k_occurrence_skewness"] == pytest.approx(k_occurrence_skewness(scores, 5), rel=1e-12)
    counts = k_occurrence(scores, 5)
    assert stats["max_k_occurrence_share"] == pytest.approx(counts.max() / 40)
    top1 = scores.argmax(axis=1)
    assert stats["max_top1_share"] == pytest.approx(np.bincount(top1).max() / 40)
    assert stats["items_top1_share"] == pytest.approx(np.isin(top1, [7, 8]).mean())
    uniform = hub_statistics(torch.eye(4), 1)
    assert uniform["k_occurrence_skewness"] == 0.0


def test_info_nce_matches_explicit_loop() -> None:
    g = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(3, 5, generator=g), dim=1)
    c = F.normalize(torch.randn(7, 5, generator=g), dim=1)
    masked = torch.zeros(3, 7, dtype=torch.bool)
    masked[0, 2] = True  # candidate 2 is another positive of query 0
    masked[1, 5] = True
    losses = []
    for i in range(3):
        keep = [j for j in range(7) if not masked[i, j]]
        logits = torch.tensor([float(q[i] @ c[j]) / 0.1 for j in keep], dtype=torch.float64)
        losses.append(torch.logsumexp(logits, 0) - logits[keep.index(i)])
    torch.testing.assert_close(
        info_nce_loss(q, c, masked, 0.1).double(), torch.stack(losses).mean(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("mapper", ["linear", "mlp"])
def test_untrained_mapper_is_identity(mapper) -> None:
    pool, (tq, tp), _ = _problem()
    m = FeatureMapper(_config(mapper=mapper, max_steps=0)).fit(tq, tp, pool)
    torch.testing.assert_close(m.map_queries(tq), F.normalize(tq, dim=1))
    torch.testing.assert_close(m.map_train(pool), pool)


@pytest.mark.parametrize("mapper", ["linear", "mlp"])
def test_tuning_improves_held_out_map_and_stops_early(mapper) -> None:
    pool, (tq, tp), (vq, vp) = _problem()
    m = FeatureMapper(_config(mapper=mapper)).fit(tq, tp, pool, val_queries=vq, val_positives=vp, val_pool=pool)
    untuned = mean_average_precision(F.normalize(vq, dim=1) @ pool.T, vp)
    assert m.untuned_val_map_ == pytest.approx(untuned)
    assert m.best_val_map_ is not None and m.best_val_map_ > untuned + 0.2, (untuned, m.best_val_map_)
    # the kept weights are the best evaluated ones, and they give the recorded mAP
    assert m.best_val_map_ == max(h["val_map"] for h in m.history_)
    assert m.validation_map(vq, vp, pool)[0] == pytest.approx(m.best_val_map_)
    assert {"k_occurrence_skewness", "max_top1_share"} <= set(m.history_[0])
    assert m.history_[0]["step"] == 0 and len(m.history_) >= 2


def test_tuning_keeps_identity_when_training_cannot_help() -> None:
    pool, (tq, tp), (vq, vp) = _problem()
    # validation labels that have nothing to do with the training signal: tuning may not beat step 0
    shuffled = [np.array([(int(p[0]) * 7 + 3) % N]) for p in vp]
    m = FeatureMapper(_config(max_steps=60)).fit(tq, tp, pool, val_queries=vq, val_positives=shuffled, val_pool=pool)
    assert m.best_val_map_ >= m.untuned_val_map_
    if m.best_step_ == 0:
        torch.testing.assert_close(m.map_queries(vq), F.normalize(vq, dim=1))


def test_same_seed_same_mapper_and_two_towers() -> None:
    pool, (tq, tp), _ = _problem()
    a = FeatureMapper(_config(max_steps=30)).fit(tq, tp, pool)
    b = FeatureMapper(_config(max_steps=30)).fit(tq, tp, pool)
    torch.testing.assert_close(a.map_queries(tq), b.map_queries(tq), rtol=0, atol=0)
    assert a.query_tower_ is not a.train_tower_
    assert not torch.allclose(a.map_queries(pool[:5]), a.map_train(pool[:5]))
    shared = FeatureMapper(_config(max_steps=30, two_towers=False)).fit(tq, tp, pool)
    assert shared.query_tower_ is shared.train_tower_
    torch.testing.assert_close(shared.map_queries(pool[:5]), shared.map_train(pool[:5]))


def test_save_load_round_trip(tmp_path) -> None:
    pool, (tq, tp), (vq, vp) = _problem()
    m = FeatureMapper(_config(mapper="mlp", max_steps=40)).fit(
        tq, tp, pool, val_queries=vq, val_positives=vp, val_pool=pool
    )
    loaded = FeatureMapper.from_pretrained(m.save_pretrained(tmp_path / "mapper"))
    assert loaded.config == m.config and loaded.history_ == m.history_ and loaded.best_step_ == m.best_step_
    torch.testing.assert_close(loaded.map_queries(vq), m.map_queries(vq))
    torch.testing.assert_close(loaded.map_train(pool), m.map_train(pool))
    assert loaded.fingerprint() == m.fingerprint()
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        FeatureMapper.from_pretrained(tmp_path / "junk.safetensors")


def test_bad_inputs() -> None:
    pool, (tq, tp), (vq, _) = _problem()
    with pytest.raises(NotFittedError):
        FeatureMapper().map_queries(tq)
    with pytest.raises(DataError, match=r"outside \[0, 300\)"):
        FeatureMapper(_config(max_steps=1)).fit(tq, [np.array([N])] * len(tq), pool)
    with pytest.raises(DataError, match="one entry per query"):
        FeatureMapper(_config(max_steps=1)).fit(tq, tp[:3], pool)
    with pytest.raises(DataError, match="16 columns"):
        FeatureMapper(_config(max_steps=1)).fit(tq, tp, pool[:, :8])
    with pytest.raises(ConfigError, match="val_queries, val_positives and val_pool"):
        FeatureMapper(_config(max_steps=1)).fit(tq, tp, pool, val_queries=vq)
    m = FeatureMapper(_config(max_steps=1)).fit(tq, tp, pool)
    with pytest.raises(DataError, match="16 columns"):
        m.map_queries(tq[:, :3])
    with pytest.raises(ConfigError, match="mapper"):
        TuningConfig(mapper="transformer")


def test_split_classes_is_seeded_and_disjoint() -> None:
    seen, held = split_classes([3, 1, 2, 0, 1, 9], 2, seed=0)
    assert sorted(seen + held) == [0, 1, 2, 3, 9] and not set(seen) & set(held) and len(held) == 2
    assert split_classes([3, 1, 2, 0, 1, 9], 2, seed=0) == (seen, held)
    with pytest.raises(ConfigError, match="n_held_out"):
        split_classes([0, 1], 2, seed=0)
