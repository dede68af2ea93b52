"""``simclr``: a small conv encoder trained on the pool with SimCLR's NT-Xent loss over tensor
augmentations (random affine crop, brightness / contrast, noise; no torchvision).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.attribution.data.extractors.backbones import (
    ConvEncoder,
    read_legacy_file,
)
from genprov.attribution.data.extractors.base import (
    FEATURE_EXTRACTORS,
    ExtractorConfig,
    FeatureExtractor,
    prepare_images,
    seeded_init_,
)
from genprov.config import is_int, require, require_ints
from genprov.exceptions import CheckpointError, DataError, NotFittedError
from genprov.models.artifact import ArtifactPayload, ArtifactRecord
from genprov.models.checkpoints import check_state
from genprov.storage import fingerprint_state
from genprov.utils.progress import progress
from genprov.utils.seeding import torch_generator

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["SimCLRConfig", "SimCLRExtractor", "augment", "nt_xent_loss"]

#: Format of the single safetensors file SimCLR encoders were saved as before the artefact format (read only).
_LEGACY_SIMCLR_FORMAT = "genprov-simclr-1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimCLRConfig(ExtractorConfig):
    """Settings of :class:`SimCLRExtractor` (Chen et al., 2020, at toy scale).

    Attributes:
        width: Channels of the encoder's first block.
        n_conv: Encoder blocks; features have ``width * 2**(n_conv - 1)`` dimensions.
        proj_dim: Output size of the projection head (used by the loss only).
        temperature: NT-Xent temperature.
        lr: Adam learning rate.
        train_batch_size: Images per step (each gives two views).
        steps: Training steps of :meth:`SimCLRExtractor.fit` (unless given there).
        seed: Seed of the weights, the batches and the augmentations.
        crop_scale: Smallest zoom of the random crop (1 = no crop).
        max_rotation: Largest rotation in degrees.
        max_translate: Largest shift, as a fraction of half the image side.
        brightness: Largest additive brightness change (in [-1, 1] units).
        contrast: Largest relative contrast change.
        noise_std: Standard deviation of the added Gaussian noise.
        flip: Random horizontal flips (off for digits, whose mirror images are other shapes).
    """

    width: int = 32
    n_conv: int = 3
    proj_dim: int = 64
    temperature: float = 0.2
    lr: float = 3e-3
    train_batch_size: int = 128
    steps: int = 200
    seed: int = 0
    crop_scale: float = 0.7
    max_rotation: float = 15.0
    max_translate: float = 0.15
    brightness: float = 0.2
    contrast: float = 0.3
    noise_std: float = 0.05
    flip: bool = False

    def validate(self) -> None:
        super().validate()
        require_ints(self, ("width", "n_conv", "proj_dim", "train_batch_size"), minimum=1)
        require(is_int(self.steps, minimum=0), "steps", "a non-negative integer", self.steps)
        require(is_int(self.seed, minimum=0), "seed", "a non-negative integer", self.seed)
        require(self.temperature > 0, "temperature", "a positive number", self.temperature)
        require(self.lr > 0, "lr", "a positive number", self.lr)
        require(0 < self.crop_scale <= 1, "crop_scale", "a number in (0, 1]", self.crop_scale)
        for name in ("max_rotation", "max_translate", "brightness", "contrast", "noise_std"):
            require(getattr(self, name) >= 0, name, "a number >= 0", getattr(self, name))


def augment(x: Tensor, gen: torch.Generator, config: SimCLRConfig) -> Tensor:
    """A random view of each image: affine crop (zoom, rotation, shift), flip, contrast, brightness, noise.

    Args:
        x: (n, C, H, W) images in [-1, 1].
        gen: The local generator every random number comes from.
        config: Augmentation strengths.

    Returns:
        (n, C, H, W) views, clamped to [-1, 1].
    """
    n = x.shape[0]

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    scale = uniform(config.crop_scale, 1.0)
    angle = uniform(-config.max_rotation, config.max_rotation) * math.pi / 180
    tx, ty = uniform(-config.max_translate, config.max_translate), uniform(-config.max_translate, config.max_translate)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if config.flip else torch.ones(n)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    c = uniform(1 - config.contrast, 1 + config.contrast).view(n, 1, 1, 1)
    b = uniform(-config.brightness, config.brightness).view(n, 1, 1, 1)
    out = (out - mean) * c + mean + b
    if config.noise_std > 0:
        out = out + config.noise_std * torch.randn(out.shape, generator=gen)
    return out.clamp(-1.0, 1.0)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent loss of two views (b, d) each: view ``i`` of one side is the positive of the other's ``i``."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    b = z1.shape[0]
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool), -math.inf)
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return F.cross_entropy(sim, targets)


@FEATURE_EXTRACTORS.register("simclr", config=SimCLRConfig)
class SimCLRExtractor(FeatureExtractor):
    """A conv encoder trained self-supervised on the pool (SimCLR's NT-Xent over two augmented views).

    Call :meth:`fit` on the pool images (or :meth:`from_pretrained` a saved one) before :meth:`extract`.
    Features are the encoder's pooled output (before the projection head), as in SimCLR. Saved encoders are
    artefacts (weights in ``state.safetensors``); a ``.safetensors`` file of the format before
    (``genprov-simclr-1``) still opens.

    Args:
        config: Settings.

    Attributes (after fit / from_pretrained):
        encoder_: The :class:`ConvEncoder`.
        head_: The projection head.
        losses_: Training loss per step.
    """

    name = "simclr"
    config: SimCLRConfig

    def __init__(self, config: SimCLRConfig | None = None) -> None:
        self.config = config if config is not None else SimCLRConfig()
        self.encoder_: ConvEncoder | None = None
        self.head_: nn.Module | None = None
        self.losses_: list[float] = []

    def _build(self, channels: int) -> None:
        cfg = self.config
        encoder = ConvEncoder(channels, cfg.width, cfg.n_conv)
        head = nn.Sequential(
            nn.Linear(encoder.out_dim, encoder.out_dim), nn.ReLU(), nn.Linear(encoder.out_dim, cfg.proj_dim)
        )
        self.encoder_ = cast(ConvEncoder, seeded_init_(encoder, cfg.seed, "simclr-encoder", channels))
        self.head_ = seeded_init_(head, cfg.seed, "simclr-head", channels)

    @property
    def dim(self) -> int:
        return self.config.width * 2 ** (self.config.n_conv - 1)

    def fit(
        self, images: object, steps: int | None = None, seed: int | None = None, *, show_progress: bool | None = False
    ) -> SimCLRExtractor:
        """Train the encoder on ``images`` from freshly seeded weights.

        Args:
            images: (n, C, H, W) pool images in [-1, 1] (at least 2).
            steps: Training steps (default ``config.steps``).
            seed: Seed (default ``config.seed``; recorded in the config so saved encoders say how they were made).
            show_progress: Progress bar over steps.

        Returns:
            ``self``.
        """
        x = prepare_images(images, name="images")
        if x.shape[0] < 2:
            raise DataError(f"SimCLR needs at least 2 images to contrast; got {x.shape[0]}.")
        changes: dict[str, Any] = {}
        if steps is not None:
            changes["steps"] = steps
        if seed is not None:
            changes["seed"] = seed
        if changes:
            self.config = self.config.replace(**changes)
        cfg = self.config
        self._build(x.shape[1])
        assert self.encoder_ is not None and self.head_ is not None
        params = list(self.encoder_.parameters()) + list(self.head_.parameters())
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        self.encoder_.train()
        self.losses_ = []
        b = min(cfg.train_batch_size, x.shape[0])
        for step in progress(range(cfg.steps), desc="simclr", total=cfg.steps, show=show_progress):
            gen = torch_generator(cfg.seed, "simclr-step", step)
            batch = x[torch.randperm(x.shape[0], generator=gen)[:b]]
            v1, v2 = augment(batch, gen, cfg), augment(batch, gen, cfg)
            loss = nt_xent_loss(self.head_(self.encoder_(v1)), self.head_(self.encoder_(v2)), cfg.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.losses_.append(float(loss.detach()))
        self.encoder_.eval()
        return self

    def _fitted(self) -> ConvEncoder:
        if self.encoder_ is None:
            raise NotFittedError(
                "SimCLRExtractor is not trained; call fit(pool_images) or SimCLRExtractor.from_pretrained(path)."
            )
        return self.encoder_

    def weights_fingerprint(self) -> str | None:
        return fingerprint_state(self._fitted())

    def check_input(self, images: object, name: str = "images") -> Tensor:
        return prepare_images(images, channels=self._fitted().in_channels, name=name)

    def _forward(self, x: Tensor) -> Tensor:
        return cast(Tensor, self._fitted()(x))

    def _artifact_payload(self) -> ArtifactPayload:
        """The config, the input channels, the training losses, and the encoder and head weights."""
        encoder = self._fitted()
        assert self.head_ is not None
        tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in self.head_.state_dict().items()})
        state = {"in_channels": encoder.in_channels, "losses": self.losses_}
        return ArtifactPayload(config=self.config, state=state, tensors=tensors)

    @classmethod
    def _restore(cls, config: Any, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        try:
            channels = int(record.state["in_channels"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{record.folder} records no valid in_channels ({err!r}); train it again.") from err
        out = cls(config)
        out._build(channels)
        assert out.encoder_ is not None and out.head_ is not None
        modules = {"encoder": out.encoder_, "head": out.head_}
        expected = {f"{n}.{k}": v for n, m in modules.items() for k, v in m.state_dict().items()}
        check_state(expected, tensors, where=str(record.folder))
        for n, m in modules.items():
            m.load_state_dict({k[len(n) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{n}.")})
        out.encoder_.eval()
        out.losses_ = [float(v) for v in record.state.get("losses") or []]
        return out


def _legacy_simclr_file(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """An encoder saved as one safetensors file (format ``genprov-simclr-1``) as an artefact record."""
    return read_legacy_file(
        path,
        _LEGACY_SIMCLR_FORMAT,
        "a genprov SimCLR encoder",
        kind=SimCLRExtractor.artifact_kind,
        method=lambda config: SimCLRExtractor.name,
        state=lambda meta: {"in_channels": int(meta["in_channels"])},
    )


SimCLRExtractor.legacy_layout = _legacy_simclr_file
