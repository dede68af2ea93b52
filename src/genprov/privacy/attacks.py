"""Model-inversion attacks that rebuild private inputs from what an explanation service releases.

Following GNIME (Jeong et al., NeurIPS 2022, Sec. 3-4), the attacker queries the service with their own
data, records the released :class:`~genprov.privacy.explainers.Observations` (explanation maps and
prediction vectors), and trains a decoder to map observations back to the inputs:

* :class:`ExpMIAttack` ("explanation model inversion"): a U-Net-style decoder from the explanation map
  plus the prediction vector to the image. The map goes through a convolutional encoder whose feature
  maps feed the decoder through skip connections; the prediction vector is embedded by a linear layer
  into a feature map that joins the encoder at the bottleneck.
* :class:`PredMIAttack`: the same decoder fed by the prediction vector alone (no encoder, no skips), the
  floor no explanation defense can push an attacker beyond while predictions are released unaltered.

Both are trained with the MSE between reconstruction and input (Adam), with early stopping on a
validation split: 20% of the attacker's data by default (``val_fraction``), or an explicit one passed to
:meth:`InversionAttack.fit`; the weights of the best validation epoch are kept. Initial weights and batch
order come from ``config.seed``. Fitted attacks are artefacts (:mod:`genprov.models.artifact`):
``save_pretrained(folder)`` writes ``config.json`` and ``state.safetensors`` (nothing pickled) and
:meth:`InversionAttack.from_pretrained` reads them back (and the ``genprov-inversion-attack-v2`` folders
of earlier versions). :meth:`InversionAttack.reconstruct` returns the tensor of reconstructions,
:meth:`InversionAttack.invert` the same as a :class:`~genprov.results.ReconstructionResult`.

Images are reconstructed in [-1, 1] (a ``tanh`` output), genprov's image range.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.config import Config, is_int, is_positive_int, require
from genprov.exceptions import CheckpointError, ConfigError, DataError, NotFittedError
from genprov.models.artifact import ArtifactPayload, ArtifactRecord, Pretrained
from genprov.models.checkpoints import check_state
from genprov.privacy.explainers import Observations
from genprov.registry import Registry
from genprov.results import ReconstructionResult
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, torch_generator
from genprov.utils.validation import check_images

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ATTACKS",
    "AttackConfig",
    "ExpMIAttack",
    "InversionAttack",
    "InversionNet",
    "PredMIAttack",
]

logger = logging.getLogger(__name__)

#: Every inversion attack, by kebab-case name: ``ATTACKS.create("exp-mi", config=AttackConfig())``.
ATTACKS: Registry[InversionAttack] = Registry("attack")

_LOG_EPS = 1e-6


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackConfig(Config):
    """Decoder architecture and training of an inversion attack.

    Attributes:
        width: Feature maps at full resolution; each lower level has twice as many.
        depth: Number of stride-2 downsampling levels of the U-Net (the bottleneck is
            ``ceil(H / 2**depth)`` pixels wide).
        prediction_input: How the prediction vector enters the decoder: ``"prob"`` (as released) or
            ``"log-prob"`` (``log(p + 1e-6)``, which spreads out tiny probabilities).
        max_epochs: Upper bound on training epochs.
        patience: Stop after this many epochs without a better validation MSE.
        lr: Adam learning rate.
        batch_size: Training batch size.
        val_fraction: Fraction of the attacker's data held out for early stopping when no explicit
            validation set is given (GNIME: 80/20).
        seed: Seed of the validation split, the initial weights and the batch order.
    """

    width: int = 32
    depth: int = 2
    prediction_input: Literal["prob", "log-prob"] = "prob"
    max_epochs: int = 100
    patience: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    val_fraction: float = 0.2
    seed: int = 0

    def validate(self) -> None:
        require(is_positive_int(self.width), "width", "a positive integer", self.width)
        require(is_int(self.depth, minimum=0) and self.depth <= 6, "depth", "an integer in [0, 6]", self.depth)
        require(
            self.prediction_input in ("prob", "log-prob"),
            "prediction_input",
            "'prob' or 'log-prob'",
            self.prediction_input,
        )
        require(is_positive_int(self.max_epochs), "max_epochs", "a positive integer", self.max_epochs)
        require(is_positive_int(self.patience), "patience", "a positive integer", self.patience)
        require(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", "a positive number", self.lr)
        require(is_positive_int(self.batch_size), "batch_size", "a positive integer", self.batch_size)
        require(
            isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction < 1,
            "val_fraction",
            "a fraction in (0, 1)",
            self.val_fraction,
        )
        require(is_int(self.seed, minimum=0), "seed", "a non-negative integer", self.seed)


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.LeakyReLU(0.2),
    )


class InversionNet(nn.Module):
    """U-Net-style decoder from (explanation map, prediction vector) or a prediction vector to an image.

    Args:
        image_shape: ``(C, H, W)`` of the reconstructed images.
        n_classes: Length of the prediction vector.
        width: Feature maps at full resolution (doubled at each lower level).
        depth: Number of downsampling levels.
        explanation_channels: Channels of the explanation map; 0 for a prediction-only decoder (PredMI).
    """

    def __init__(
        self, image_shape: tuple[int, int, int], n_classes: int, width: int, depth: int, explanation_channels: int
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (int(c), int(h), int(w))
        self.n_classes = int(n_classes)
        self.explanation_channels = int(explanation_channels)
        self.sizes = [(h, w)]
        for _ in range(depth):
            ph, pw = self.sizes[-1]
            self.sizes.append(((ph + 1) // 2, (pw + 1) // 2))
        widths = [width * 2**level for level in range(depth + 1)]
        self.widths = widths
        bh, bw = self.sizes[-1]
        use_expl = self.explanation_channels > 0
        self.encoder = nn.ModuleList()
        if use_expl:
            self.encoder.append(_block(self.explanation_channels, widths[0]))
            for level in range(1, depth + 1):
                self.encoder.append(_block(widths[level - 1], widths[level], stride=2))
        self.embed = nn.Sequential(nn.Linear(self.n_classes, widths[-1] * bh * bw), nn.LeakyReLU(0.2))
        self.merge = _block(widths[-1] * (2 if use_expl else 1), widths[-1])
        self.decoder = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            c_in = widths[level + 1] + (widths[level] if use_expl else 0)
            self.decoder.append(_block(c_in, widths[level]))
        self.out = nn.Conv2d(widths[0], c, 1)

    def forward(self, predictions: Tensor, explanations: Tensor | None = None) -> Tensor:
        """(n, n_classes) predictions [+ (n, E, H, W) explanations] -> (n, C, H, W) images.

        The head is linear (trained with MSE against images in [-1, 1]; callers clamp to [-1, 1]): a tanh head
        saturated at the background value of MNIST in the first epoch and never learned again.
        """
        bh, bw = self.sizes[-1]
        z = self.embed(predictions).view(len(predictions), self.widths[-1], bh, bw)
        skips: list[Tensor] = []
        if self.explanation_channels > 0:
            if explanations is None:
                raise DataError("This decoder needs explanation maps (it is an ExpMI decoder); got none.")
            h = explanations
            for block in self.encoder:
                h = block(h)
                skips.append(h)
            z = torch.cat([skips.pop(), z], dim=1)
        h = self.merge(z)
        for i, block in enumerate(self.decoder):
            level = len(self.decoder) - 1 - i
            h = F.interpolate(h, size=self.sizes[level], mode="nearest")
            if self.explanation_channels > 0:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h)
        out: Tensor = self.out(h)
        return out


class InversionAttack(Pretrained):
    """Base of the inversion attacks: fit a decoder on (observations, inputs), then reconstruct.

    Args:
        config: Architecture and training settings (default: defaults).

    Attributes:
        net_: The trained decoder (eval mode).
        image_shape_: ``(C, H, W)`` of the inputs it reconstructs.
        n_classes_: Length of the prediction vectors.
        history_: Per epoch ``{"epoch", "train_mse", "val_mse"}``.
        best_epoch_: Epoch whose weights were kept (lowest validation MSE).
        val_mse_: That validation MSE.
    """

    name: ClassVar[str] = ""
    artifact_kind: ClassVar[str] = "inversion-attack"
    tensors_file: ClassVar[str] = "model.safetensors"
    #: whether the decoder reads the explanation maps
    uses_explanations: ClassVar[bool] = False

    net_: InversionNet
    image_shape_: tuple[int, int, int]
    n_classes_: int
    history_: list[dict[str, float]]
    best_epoch_: int
    val_mse_: float

    def __init__(self, config: AttackConfig | None = None) -> None:
        if config is not None and not isinstance(config, AttackConfig):
            raise ConfigError(f"{type(self).__name__} takes an AttackConfig; got {type(config).__name__}.")
        self.config = config if config is not None else AttackConfig()

    # ------------------------------------------------------------------------------------------ inputs

    def _as_observations(self, observations: Observations | Tensor, name: str) -> Observations:
        if isinstance(observations, Tensor):
            if self.uses_explanations:
                raise DataError(
                    f"{type(self).__name__} needs explanation maps: pass Observations(explanations=..., "
                    f"predictions=...) as {name} (e.g. from explainer.observe(x)), not a bare tensor."
                )
            observations = Observations(explanations=None, predictions=observations)
        if not isinstance(observations, Observations):
            raise DataError(
                f"{name} must be Observations or a (n, n_classes) tensor; got {type(observations).__name__}."
            )
        if self.uses_explanations and observations.explanations is None:
            raise DataError(f"{type(self).__name__} needs explanation maps, but {name} holds predictions only.")
        return observations

    def _tensors(self, obs: Observations, name: str) -> tuple[Tensor, Tensor | None]:
        p = obs.predictions.detach().to(torch.float32)
        if not p.isfinite().all():
            raise DataError(f"{name}.predictions contains NaN or infinite values.")
        if self.config.prediction_input == "log-prob":
            p = torch.log(p.clamp(min=0) + _LOG_EPS)
        e = None
        if self.uses_explanations:
            e = check_images(obs.explanations, f"{name}.explanations", value_range=None).detach().to(torch.float32)
        return p, e

    def _check_shapes(self, p: Tensor, e: Tensor | None, name: str) -> None:
        if p.shape[1] != self.n_classes_:
            raise DataError(
                f"{name}.predictions must have {self.n_classes_} classes (what the attack was fitted on); got "
                f"shape {tuple(p.shape)}."
            )
        if e is not None:
            _, h, w = self.image_shape_
            expected = (self.net_.explanation_channels, h, w)
            if tuple(e.shape[1:]) != expected:
                raise DataError(
                    f"{name}.explanations must have shape (n, {expected[0]}, {h}, {w}) (one map per input, of "
                    f"the inputs' spatial shape); got {tuple(e.shape)}."
                )

    # -------------------------------------------------------------------------------------------- fit

    def fit(
        self,
        observations: Observations | Tensor,
        inputs: Tensor,
        *,
        validation: tuple[Observations | Tensor, Tensor] | None = None,
        show_progress: bool | None = None,
        device: str | torch.device = "cpu",
    ) -> Self:
        """Train the decoder to map observations to inputs (MSE), with early stopping.

        Args:
            observations: What the attacker saw for each of their inputs: :class:`Observations` (for PredMI
                also a bare (n, n_classes) prediction tensor). Explanations must be (n, 1, H, W) maps of
                the inputs' spatial shape.
            inputs: (n, C, H, W) the attacker's images in [-1, 1], row i matching observation i.
            validation: ``(observations, inputs)`` for early stopping; default: a ``val_fraction`` split
                of the given data (seeded).
            show_progress: Draw a progress bar (default: when stderr is a terminal).
            device: Where to train (e.g. ``"cuda"``); the decoder stays there, reconstructions come back
                on the CPU.

        Returns:
            ``self``.

        Raises:
            DataError: Mismatched lengths or shapes, NaN values, or too few examples to split.
        """
        cfg = self.config
        obs = self._as_observations(observations, "observations")
        x = check_images(inputs, "inputs").detach().to(torch.float32)
        if len(obs) != len(x):
            raise DataError(f"observations and inputs must pair up; got {len(obs)} observations and {len(x)} inputs.")
        p, e = self._tensors(obs, "observations")
        if e is not None and tuple(e.shape[2:]) != tuple(x.shape[2:]):
            raise DataError(
                f"observations.explanations must have the inputs' spatial shape (n, {e.shape[1]}, "
                f"{x.shape[2]}, {x.shape[3]}); got {tuple(e.shape)}."
            )
        if validation is None:
            n_val = max(1, round(cfg.val_fraction * len(x)))
            if len(x) - n_val < 1:
                raise DataError(
                    f"fit needs at least 2 examples to hold out a validation split; got {len(x)}. Pass more data."
                )
            order = torch.randperm(len(x), generator=torch_generator(cfg.seed, "attack-val-split", len(x)))
            val_idx, tr_idx = order[:n_val], order[n_val:]
            p_val, e_val, x_val = p[val_idx], (e[val_idx] if e is not None else None), x[val_idx]
            p, e, x = p[tr_idx], (e[tr_idx] if e is not None else None), x[tr_idx]
        else:
            v_obs = self._as_observations(validation[0], "validation observations")
            x_val = check_images(validation[1], "validation inputs").detach().to(torch.float32)
            if len(v_obs) != len(x_val) or len(x_val) == 0:
                raise DataError(
                    f"validation observations and inputs must pair up and be non-empty; got {len(v_obs)} and "
                    f"{len(x_val)}."
                )
            p_val, e_val = self._tensors(v_obs, "validation observations")
            if x_val.shape[1:] != x.shape[1:] or p_val.shape[1] != p.shape[1]:
                raise DataError(
                    f"validation data must have the training data's shapes: inputs {tuple(x.shape[1:])}, "
                    f"{p.shape[1]} classes; got {tuple(x_val.shape[1:])} and {p_val.shape[1]}."
                )
        self.image_shape_ = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        self.n_classes_ = int(p.shape[1])
        expl_channels = int(e.shape[1]) if e is not None else 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "attack-init", self.name))
            net = InversionNet(self.image_shape_, self.n_classes_, cfg.width, cfg.depth, expl_channels)
        self.net_ = net
        self._check_shapes(p_val, e_val, "validation observations")
        dev = torch.device(device)
        net.to(dev)
        p, x, p_val, x_val = p.to(dev), x.to(dev), p_val.to(dev), x_val.to(dev)
        e = e.to(dev) if e is not None else None
        e_val = e_val.to(dev) if e_val is not None else None
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        best = math.inf
        best_state = copy.deepcopy(net.state_dict())
        self.history_ = []
        self.best_epoch_ = 0
        stale = 0
        for epoch in progress(range(cfg.max_epochs), desc=f"training {self.name}", show=show_progress):
            net.train()
            order = torch.randperm(len(x), generator=torch_generator(cfg.seed, "attack-epoch", epoch)).to(dev)
            total = 0.0
            for idx in order.split(cfg.batch_size):
                rec = net(p[idx], e[idx] if e is not None else None)
                loss = F.mse_loss(rec, x[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            val = self._mse(net, p_val, e_val, x_val)
            self.history_.append({"epoch": float(epoch), "train_mse": total / len(x), "val_mse": val})
            if not math.isfinite(val):
                raise DataError(f"{self.name} training diverged (validation MSE {val}); lower lr.")
            if val < best:
                best, stale, self.best_epoch_ = val, 0, epoch
                best_state = copy.deepcopy(net.state_dict())
            else:
                stale += 1
                if stale >= cfg.patience:
                    logger.info(
                        "%s: early stop at epoch %d (best %d, val MSE %.5f)", self.name, epoch, self.best_epoch_, best
                    )
                    break
        net.load_state_dict(best_state)
        self.net_ = net.eval()
        self.val_mse_ = best
        return self

    def _mse(self, net: InversionNet, p: Tensor, e: Tensor | None, x: Tensor) -> float:
        net.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(x), 512):
                sl = slice(i, i + 512)
                rec = net(p[sl], e[sl] if e is not None else None).clamp(-1.0, 1.0)
                total += float(F.mse_loss(rec, x[sl], reduction="sum"))
        return total / x.numel()

    # ------------------------------------------------------------------------------------ reconstruct

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_") or not hasattr(self, "val_mse_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call .fit(observations, inputs) first "
                "(or reopen a fitted one with InversionAttack.from_pretrained(folder))."
            )

    def reconstruct(self, observations: Observations | Tensor, *, batch_size: int = 512) -> Tensor:
        """Rebuild the inputs behind ``observations``.

        Args:
            observations: :class:`Observations` (PredMI also takes a bare (n, n_classes) tensor), of the
                shapes the attack was fitted on.
            batch_size: Observations per forward pass (does not change the result).

        Returns:
            (n, C, H, W) float32 reconstructions in [-1, 1].

        Raises:
            NotFittedError: Before :meth:`fit`.
            DataError: Shapes other than those fitted on (the message names both).
        """
        self._check_fitted()
        obs = self._as_observations(observations, "observations")
        p, e = self._tensors(obs, "observations")
        self._check_shapes(p, e, "observations")
        parts = []
        dev = next(self.net_.parameters()).device
        with torch.no_grad():
            for i in range(0, len(p), batch_size):
                sl = slice(i, i + batch_size)
                eb = e[sl].to(dev) if e is not None else None
                parts.append(self.net_(p[sl].to(dev), eb).clamp(-1.0, 1.0).to("cpu"))
        if not parts:
            return torch.empty(0, *self.image_shape_)
        return torch.cat(parts)

    def invert(self, observations: Observations | Tensor, private: Tensor | None = None) -> ReconstructionResult:
        """:meth:`reconstruct` as a :class:`~genprov.results.ReconstructionResult`.

        Args:
            observations: As for :meth:`reconstruct`.
            private: (n, C, H, W) the true inputs in [-1, 1], or ``None``; when given, ``metrics`` holds
                their mean squared error ``{"mse": ...}``.

        Raises:
            DataError: ``private`` does not have the reconstructions' shape.
        """
        rec = self.reconstruct(observations)
        metrics: dict[str, float] = {}
        if private is not None:
            x = check_images(private, "private", value_range=(-1.0, 1.0)).detach().to(torch.float32)
            if x.shape != rec.shape:
                raise DataError(
                    f"private must have the reconstructions' shape {tuple(rec.shape)}; got {tuple(x.shape)}."
                )
            metrics["mse"] = float(F.mse_loss(rec, x))
        return ReconstructionResult(
            method=self.name, config=self.config.to_dict(), reconstructions=rec.numpy(), metrics=metrics
        )

    # ---------------------------------------------------------------------------------------- save/load

    def _payload(self) -> ArtifactPayload:
        self._check_fitted()
        return ArtifactPayload(
            config=self.config,
            state={
                "image_shape": list(self.image_shape_),
                "n_classes": self.n_classes_,
                "explanation_channels": self.net_.explanation_channels,
                "best_epoch": self.best_epoch_,
                "val_mse": self.val_mse_,
                "history": self.history_,
            },
            tensors=self.net_.state_dict(),
        )

    @classmethod
    def _from_record(cls, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        try:
            factory = ATTACKS.entry(record.method).factory
        except ConfigError as err:
            raise CheckpointError(f"{record.folder}: {err}") from err
        if not (isinstance(factory, type) and issubclass(factory, cls)):
            raise CheckpointError(f"{record.folder} holds a {record.method!r} attack, not a {cls.__name__}.")
        attack = factory(config=AttackConfig.from_dict(record.config))
        meta = record.state
        c, h, w = (int(v) for v in meta["image_shape"])
        net = InversionNet(
            (c, h, w),
            int(meta["n_classes"]),
            attack.config.width,
            attack.config.depth,
            int(meta["explanation_channels"]),
        )
        check_state(net.state_dict(), tensors, where=str(record.folder), hint=" Re-fit and save the attack.")
        net.load_state_dict(tensors)
        attack.net_ = net.eval()
        attack.image_shape_ = (c, h, w)
        attack.n_classes_ = int(meta["n_classes"])
        attack.history_ = [dict(h_) for h_ in meta.get("history", [])]
        attack.best_epoch_ = int(meta["best_epoch"])
        attack.val_mse_ = float(meta["val_mse"])
        return attack

    def describe(self) -> dict[str, Any]:
        """``{"name", "config", "val_mse", "best_epoch"}`` for reports (fitted state where available)."""
        out: dict[str, Any] = {"name": self.name, "config": self.config.to_dict()}
        if hasattr(self, "val_mse_"):
            out.update(val_mse=self.val_mse_, best_epoch=self.best_epoch_)
        return out


@ATTACKS.register("exp-mi", config=AttackConfig)
class ExpMIAttack(InversionAttack):
    """ExpMI: U-Net decoder from explanation map + prediction vector to the image (GNIME, Sec. 4).

    Args:
        config: Architecture and training settings.
    """

    name = "exp-mi"
    uses_explanations = True


@ATTACKS.register("pred-mi", config=AttackConfig)
class PredMIAttack(InversionAttack):
    """PredMI: decoder from the prediction vector alone (explanations, if given, are ignored).

    Args:
        config: Architecture and training settings.
    """

    name = "pred-mi"
    uses_explanations = False


def _upgrade_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``genprov-inversion-attack-v2`` config.json (linear decoder head) in the artefact layout."""
    keys = ("image_shape", "n_classes", "explanation_channels", "best_epoch", "val_mse", "history")
    return {**raw, "kind": "inversion-attack", "state": {k: raw.get(k) for k in keys}, "tensors": "model.safetensors"}


InversionAttack.legacy_formats = {"genprov-inversion-attack-v2": _upgrade_v2}
