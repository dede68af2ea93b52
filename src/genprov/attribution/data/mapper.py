"""Contrastive tuning of frozen features (:class:`FeatureMapper`) and the retrieval statistics it tracks.

Tuning (sec. 5 of Wang et al., ICCV 2023, "Evaluating data attribution for text-to-image models"; the
original authors never released this code): a mapper on frozen features from
:mod:`~genprov.attribution.data.extractors`, linear and initialised to the identity (or residual MLP
``x + f(x)`` with ``f`` initialised to 0), with two towers (one for training / exemplar images, one for
generated queries), trained with InfoNCE (temperature ``temperature``; negatives: the other queries'
positives in the batch plus ``n_pool_negatives`` random pool rows; a query's other positives are masked
out), regularised toward the identity (``identity_weight * ||W - I||^2``), and early-stopped on the mAP
(:func:`genprov.metrics.average_precision`) of validation queries (best checkpoint kept; step 0, the
identity, is a candidate, so tuning never returns a mapper worse than untuned on the validation set).
Hubness, the failure mode where a few tuned items become everyone's nearest neighbour, is tracked per
evaluation by :func:`hub_statistics`.

A fitted mapper is an artefact (:mod:`genprov.models.artifact`, kind ``feature-mapper``, method the
architecture): ``save_pretrained(folder)`` / ``FeatureMapper.from_pretrained(folder)``; a ``.safetensors``
file of the format before (``genprov-feature-mapper-1``) still opens.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import skew
from torch import Tensor, nn

from genprov.attribution.data.extractors.backbones import read_legacy_file
from genprov.attribution.data.extractors.base import seeded_init_
from genprov.config import Config, is_int, require, require_ints
from genprov.exceptions import CheckpointError, ConfigError, DataError, NotFittedError
from genprov.metrics import average_precision
from genprov.models.artifact import ArtifactPayload, ArtifactRecord, Pretrained
from genprov.models.checkpoints import check_state
from genprov.storage import fingerprint_state
from genprov.utils.arrays import as_index_list
from genprov.utils.progress import progress
from genprov.utils.seeding import torch_generator

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MAPPERS", "FeatureMapper", "TuningConfig", "hub_statistics", "info_nce_loss", "split_classes"]

#: Mapper architectures of :class:`FeatureMapper`.
MAPPERS = ("linear", "mlp")
#: Format of the single safetensors file mappers were saved as before the artefact format (read only).
_LEGACY_MAPPER_FORMAT = "genprov-feature-mapper-1"
#: The fitted attributes recorded in the artefact's state besides the feature dimension.
_RECORDED = ("history_", "best_step_", "untuned_val_map_", "best_val_map_")


def _positive_tensors(positives: Sequence[Any], name: str, n_rows: int, n_items: int) -> list[Tensor]:
    """Checked positives (see :func:`genprov.utils.arrays.as_index_list`) as sorted int64 tensors."""
    return [torch.from_numpy(np.sort(p)) for p in as_index_list(positives, name, n_rows=n_rows, n_items=n_items)]


def hub_statistics(scores: Tensor | np.ndarray, k: int = 10, *, items: Sequence[int] | None = None) -> dict[str, float]:
    """Hubness of a retrieval: how unevenly items land in the queries' top-k (Radovanović et al., 2010).

    Args:
        scores: (n_q, n_items) scores, higher = ranked earlier (ties: lower index first).
        k: Cut-off of the k-occurrence.
        items: Optional item set (e.g. the exemplars the mapper was tuned on) whose share of top-1 to report.

    Returns:
        ``k_occurrence_skewness`` (skewness of the per-item top-k counts, 0 when uniform; equals
        ``genprov.eval.retrieval.k_occurrence_skewness``), ``max_k_occurrence_share`` (largest count / n_q),
        ``max_top1_share`` (share of queries whose top-1 is the most common top-1 item), and with ``items``
        ``items_top1_share`` (share of queries whose top-1 is one of ``items``).
    """
    s = torch.from_numpy(np.array(scores)) if not isinstance(scores, Tensor) else scores.detach()
    if s.ndim != 2 or s.shape[1] == 0 or s.shape[0] == 0:
        raise DataError(f"scores must be a non-empty (n_q, n_items) matrix; got shape {tuple(s.shape)}.")
    if not 1 <= k <= s.shape[1]:
        raise ConfigError(f"k must be in [1, {s.shape[1]}]; got {k}.")
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    counts = np.bincount(order[:, :k].reshape(-1).numpy(), minlength=s.shape[1]).astype(np.float64)
    top1 = np.bincount(order[:, 0].numpy(), minlength=s.shape[1])
    n_q = s.shape[0]
    out = {
        "k_occurrence_skewness": 0.0 if np.all(counts == counts[0]) else float(skew(counts)),
        "max_k_occurrence_share": float(counts.max() / n_q),
        "max_top1_share": float(top1.max() / n_q),
    }
    if items is not None:
        chosen = np.zeros(s.shape[1], dtype=bool)
        chosen[np.asarray(items, dtype=np.int64)] = True
        out["items_top1_share"] = float(chosen[order[:, 0].numpy()].mean())
    return out


def split_classes(classes: Sequence[int] | np.ndarray, n_held_out: int, seed: int) -> tuple[list[int], list[int]]:
    """Split the distinct class labels into (seen, held-out) sets, held-out chosen by ``seed``.

    Tune on the seen classes and early-stop / test on the held-out ones (the paper's unseen-class protocol).
    """
    distinct = sorted({int(c) for c in np.asarray(classes).ravel()})
    if not 1 <= n_held_out < len(distinct):
        raise ConfigError(
            f"n_held_out must be in [1, {len(distinct) - 1}] for {len(distinct)} classes; got {n_held_out}."
        )
    perm = torch.randperm(len(distinct), generator=torch_generator(seed, "split-classes")).tolist()
    held = sorted(distinct[i] for i in perm[:n_held_out])
    return [c for c in distinct if c not in held], held


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuningConfig(Config):
    """Settings of :class:`FeatureMapper`.

    Attributes:
        mapper: ``"linear"`` (``W x + b``, W initialised to I) or ``"mlp"`` (``x + f(x)``, f's last layer 0).
        hidden_dim: Hidden units of the MLP mapper.
        two_towers: Separate mappers for queries (generated images) and training images; else one shared.
        temperature: InfoNCE temperature.
        n_pool_negatives: Random pool rows added to each batch's negatives.
        identity_weight: Weight of the squared distance to the identity map (``||W - I||^2 + ||b||^2``; for
            the MLP the squared weights of its residual branch's last layer).
        lr: Adam learning rate.
        batch_size: Queries per step.
        max_steps: Most training steps.
        eval_every: Steps between validation mAP evaluations.
        patience: Evaluations without improvement before stopping.
        hub_k: k of the hub statistics recorded at each evaluation.
        seed: Seed of the batches, the positives chosen, the negatives and the MLP's weights.
    """

    mapper: str = "linear"
    hidden_dim: int = 256
    two_towers: bool = True
    temperature: float = 0.07
    n_pool_negatives: int = 256
    identity_weight: float = 1.0
    lr: float = 1e-3
    batch_size: int = 64
    max_steps: int = 500
    eval_every: int = 25
    patience: int = 4
    hub_k: int = 10
    seed: int = 0

    def validate(self) -> None:
        require(self.mapper in MAPPERS, "mapper", f"one of {MAPPERS}", self.mapper)
        require_ints(self, ("hidden_dim", "batch_size", "eval_every", "patience", "hub_k"), minimum=1)
        require(is_int(self.n_pool_negatives, minimum=0), "n_pool_negatives", "an integer >= 0", self.n_pool_negatives)
        require(is_int(self.max_steps, minimum=0), "max_steps", "an integer >= 0", self.max_steps)
        require(is_int(self.seed, minimum=0), "seed", "a non-negative integer", self.seed)
        require(self.temperature > 0, "temperature", "a positive number", self.temperature)
        require(self.identity_weight >= 0, "identity_weight", "a number >= 0", self.identity_weight)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(isinstance(self.two_towers, bool), "two_towers", "True or False", self.two_towers)


def info_nce_loss(queries: Tensor, candidates: Tensor, masked: Tensor, temperature: float) -> Tensor:
    """InfoNCE with in-batch and pool negatives: query ``i``'s positive is candidate ``i``.

    Args:
        queries: (b, d) unit query embeddings.
        candidates: (b + m, d) unit candidate embeddings: the b queries' chosen positives, then m pool negatives.
        masked: (b, b + m) bool, true where a candidate is another positive of the query (left out of its
            denominator; never true at (i, i)).
        temperature: Softmax temperature.

    Returns:
        ``mean_i -log(exp(q_i.c_i / T) / sum_{j not masked} exp(q_i.c_j / T))``.
    """
    logits = (queries @ candidates.T / temperature).masked_fill(masked, -math.inf)
    return F.cross_entropy(logits, torch.arange(queries.shape[0]))


class _LinearTower(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T + self.bias

    def penalty(self) -> Tensor:
        eye = torch.eye(self.weight.shape[0])
        return ((self.weight - eye) ** 2).sum() + (self.bias**2).sum()


class _MLPTower(nn.Module):
    def __init__(self, dim: int, hidden: int, seed: int, key: str) -> None:
        super().__init__()
        self.fc1 = seeded_init_(nn.Linear(dim, hidden), seed, "mapper", key)
        self.fc2 = nn.Linear(hidden, dim)
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))

    def penalty(self) -> Tensor:
        return (self.fc2.weight**2).sum() + (self.fc2.bias**2).sum()


def _as_features(x: Tensor | np.ndarray, name: str, dim: int | None = None) -> Tensor:
    t = x.detach().cpu() if isinstance(x, Tensor) else torch.from_numpy(np.array(x))
    if t.ndim != 2 or t.shape[0] == 0:
        raise DataError(f"{name} must be a non-empty (n, d) feature matrix; got shape {tuple(t.shape)}.")
    if dim is not None and t.shape[1] != dim:
        raise DataError(f"{name} must have {dim} columns (the mapper's feature dimension); got {tuple(t.shape)}.")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{name} contains NaN or infinite values.")
    return t


class FeatureMapper(Pretrained):
    """Contrastively tuned map of frozen features (two towers; see the module docstring).

    Args:
        config: Settings.

    Attributes (after :meth:`fit` / :meth:`from_pretrained`):
        dim_: Feature dimension.
        query_tower_, train_tower_: The towers (the same module when ``two_towers`` is false).
        history_: ``[{"step", "loss", "val_map", hub statistics...}]`` per evaluation.
        best_step_: Step of the kept weights (0 = the identity).
        untuned_val_map_, best_val_map_: Validation mAP at step 0 and of the kept weights (``None`` without
            validation data).
    """

    artifact_kind: ClassVar[str] = "feature-mapper"

    def __init__(self, config: TuningConfig | None = None) -> None:
        self.config = config if config is not None else TuningConfig()
        self.dim_: int | None = None
        self.query_tower_: nn.Module | None = None
        self.train_tower_: nn.Module | None = None
        self.history_: list[dict[str, float]] = []
        self.best_step_: int | None = None
        self.untuned_val_map_: float | None = None
        self.best_val_map_: float | None = None

    def _build(self, dim: int) -> None:
        cfg = self.config

        def tower(key: str) -> nn.Module:
            return _LinearTower(dim) if cfg.mapper == "linear" else _MLPTower(dim, cfg.hidden_dim, cfg.seed, key)

        self.dim_ = dim
        self.query_tower_ = tower("query")
        self.train_tower_ = tower("train") if cfg.two_towers else self.query_tower_

    def _towers(self) -> tuple[nn.Module, nn.Module]:
        if self.query_tower_ is None or self.train_tower_ is None:
            raise NotFittedError("FeatureMapper is not fitted; call fit(...) or FeatureMapper.from_pretrained(path).")
        return self.query_tower_, self.train_tower_

    def map_queries(self, features: Tensor | np.ndarray) -> Tensor:
        """Map (n, d) query (generated-image) features; returns unit rows (n, d) float32."""
        q_tower, _ = self._towers()
        x = _as_features(features, "features", self.dim_)
        with torch.no_grad():
            return F.normalize(q_tower(x), dim=1, eps=1e-12)

    def map_train(self, features: Tensor | np.ndarray) -> Tensor:
        """Map (n, d) training / exemplar features; returns unit rows (n, d) float32."""
        _, t_tower = self._towers()
        x = _as_features(features, "features", self.dim_)
        with torch.no_grad():
            return F.normalize(t_tower(x), dim=1, eps=1e-12)

    def validation_map(self, queries: Tensor, positives: Sequence[Any], pool: Tensor) -> tuple[float, Tensor]:
        """(mAP, scores) of mapped ``queries`` against the mapped ``pool``."""
        scores = self.map_queries(queries) @ self.map_train(pool).T
        return float(average_precision(scores, positives).mean()), scores

    def fit(
        self,
        query_features: Tensor | np.ndarray,
        positives: Sequence[Any],
        pool_features: Tensor | np.ndarray,
        *,
        val_queries: Tensor | np.ndarray | None = None,
        val_positives: Sequence[Any] | None = None,
        val_pool: Tensor | np.ndarray | None = None,
        show_progress: bool | None = False,
    ) -> FeatureMapper:
        """Train the towers with InfoNCE on (query, exemplar) pairs.

        Args:
            query_features: (n_q, d) frozen features of generated images.
            positives: Per query, indices of its exemplars in ``pool_features``.
            pool_features: (n_pool, d) frozen features of exemplars and other training images (negatives).
            val_queries, val_positives, val_pool: Validation data (held-out classes) for early stopping;
                without it the mapper trains ``max_steps`` steps and keeps the last weights.
            show_progress: Progress bar over steps.

        Returns:
            ``self``.
        """
        cfg = self.config
        queries = F.normalize(_as_features(query_features, "query_features"), dim=1)
        pool = F.normalize(_as_features(pool_features, "pool_features", queries.shape[1]), dim=1)
        pos = _positive_tensors(positives, "positives", queries.shape[0], pool.shape[0])
        has_val = val_queries is not None or val_positives is not None or val_pool is not None
        if has_val and (val_queries is None or val_positives is None or val_pool is None):
            raise ConfigError("pass all of val_queries, val_positives and val_pool, or none of them.")
        self._build(queries.shape[1])
        q_tower, t_tower = self._towers()
        params = list({id(p): p for m in (q_tower, t_tower) for p in m.parameters()}.values())
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        towers = [q_tower] if q_tower is t_tower else [q_tower, t_tower]
        self.history_ = []
        vq = vp = None
        if has_val:
            vq = F.normalize(_as_features(cast(Tensor, val_queries), "val_queries", queries.shape[1]), dim=1)
            vp = F.normalize(_as_features(cast(Tensor, val_pool), "val_pool", queries.shape[1]), dim=1)
            as_index_list(val_positives, "val_positives", n_rows=vq.shape[0], n_items=vp.shape[0])
        best_state = self._state()
        best = -math.inf
        since_best = 0
        self.best_step_ = 0
        last_loss = math.nan

        def evaluate(step: int) -> bool:
            nonlocal best, best_state, since_best
            assert vq is not None and vp is not None and val_positives is not None
            value, scores = self.validation_map(vq, val_positives, vp)
            record = {"step": float(step), "val_map": value}
            if step > 0:
                record["loss"] = last_loss
            record.update(hub_statistics(scores, min(cfg.hub_k, scores.shape[1])))
            self.history_.append(record)
            if step == 0:
                self.untuned_val_map_ = value
            if value > best:
                best, best_state, since_best, self.best_step_ = value, self._state(), 0, step
            else:
                since_best += 1
            return since_best >= cfg.patience

        if has_val:
            evaluate(0)  # the untuned (identity) mapper's score: the one to beat
        b = min(cfg.batch_size, queries.shape[0])
        for step in progress(range(1, cfg.max_steps + 1), desc="tuning", total=cfg.max_steps, show=show_progress):
            gen = torch_generator(cfg.seed, "tune-step", step)
            batch = torch.randperm(queries.shape[0], generator=gen)[:b]
            chosen = torch.stack([pos[int(q)][torch.randint(len(pos[int(q)]), (1,), generator=gen)][0] for q in batch])
            negatives = torch.randint(pool.shape[0], (cfg.n_pool_negatives,), generator=gen)
            columns = torch.cat([chosen, negatives])
            # a column that is a positive of query i (other than its own target) is not a negative of i
            is_pos = torch.stack([torch.isin(columns, pos[int(q)]) for q in batch])
            is_pos[torch.arange(b), torch.arange(b)] = False
            for m in towers:
                m.train()
            zq = F.normalize(q_tower(queries[batch]), dim=1)
            zt = F.normalize(t_tower(pool[columns]), dim=1)
            loss = info_nce_loss(zq, zt, is_pos, cfg.temperature)
            penalty = sum((cast(Any, m).penalty() for m in towers), torch.zeros(()))
            total = loss + cfg.identity_weight * penalty
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            last_loss = float(loss.detach())
            if not has_val:
                continue
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                for m in towers:
                    m.eval()
                if evaluate(step):
                    break
        if has_val:
            self._load_state(best_state)
            self.best_val_map_ = best
        else:
            self.best_step_ = cfg.max_steps
        for m in towers:
            m.eval()
        return self

    def _state(self) -> dict[str, Tensor]:
        q_tower, t_tower = self._towers()
        state = {f"query.{k}": v.detach().clone() for k, v in q_tower.state_dict().items()}
        state.update({f"train.{k}": v.detach().clone() for k, v in t_tower.state_dict().items()})
        return state

    def _load_state(self, state: Mapping[str, Tensor]) -> None:
        q_tower, t_tower = self._towers()
        q_tower.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("query.")})
        if t_tower is not q_tower:
            t_tower.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("train.")})

    def _method_name(self) -> str:
        return self.config.mapper

    def _payload(self) -> ArtifactPayload:
        tensors = self._state()
        state = {"dim": self.dim_, **{name.rstrip("_"): getattr(self, name) for name in _RECORDED}}
        return ArtifactPayload(config=self.config, state=state, tensors=tensors)

    @classmethod
    def _from_record(cls, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        try:
            out = cls(TuningConfig.from_dict(record.config))
            out._build(int(record.state["dim"]))
        except (KeyError, TypeError, ValueError, ConfigError) as err:
            raise CheckpointError(f"{record.folder} records an invalid mapper ({err}); tune it again.") from err
        for name in _RECORDED:
            if name.rstrip("_") in record.state:
                setattr(out, name, record.state[name.rstrip("_")])
        check_state(out._state(), tensors, where=str(record.folder))
        out._load_state(tensors)
        for m in out._towers():
            m.eval()
        return out

    def fingerprint(self) -> str:
        """A hash of the towers' weights (part of store specs)."""
        return fingerprint_state(self._state())


def _legacy_mapper_file(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """A mapper saved as one safetensors file (format ``genprov-feature-mapper-1``) as an artefact record."""
    return read_legacy_file(
        path,
        _LEGACY_MAPPER_FORMAT,
        "a genprov feature mapper",
        kind=FeatureMapper.artifact_kind,
        method=lambda config: str(config.get("mapper", "")),
        state=_legacy_mapper_state,
    )


def _legacy_mapper_state(meta: dict[str, str]) -> dict[str, Any]:
    recorded = {name.rstrip("_"): json.loads(meta.get(name.rstrip("_"), "null")) for name in _RECORDED}
    return {"dim": int(meta["dim"]), **recorded, "history": recorded["history"] or []}


FeatureMapper.legacy_layout = _legacy_mapper_file
