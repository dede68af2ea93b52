"""Defenses against explanation-based model inversion: each one wraps an :class:`Explainer`.

A defense releases a perturbed version of the wrapped explainer's post-processed map (n, 1, H, W), and
the model's predictions unaltered. Its cost in explanation utility is the *distortion*, the mean squared
difference between defended and clean maps (:func:`measure_distortion`).

* :class:`GNIMEDefense` (Jeong et al., NeurIPS 2022, "Learning to Generate Inversion-Resistant Model
  Explanations", Sec. 4), built as the original code builds it (WSP-LAB/GNIME ``scripts/models.py:141-213``):
  a noise generator ``G``, an ExpMI U-Net (:class:`~genprov.privacy.unet.ExpMIUNet`) reading the
  standardised map ``s(e) = (e - mean) / std`` (the defender's mean and std) and the victim's logits ``z``,
  outputs the defended map ``d = clip(std * G(s(e), z) + mean, 0, 1)``. It is trained jointly with a
  surrogate inverter ``I`` (an ExpMI decoder, :class:`~genprov.privacy.attacks.InversionNet`, linear head):

  - generator loss ``MSE(G(s(e), z), s(e)) - a * MSE(I(d, z), x)``: the distortion is measured on
    standardised maps and the reconstruction error on images in [0, 1] (``(x + 1) / 2``), both as in the
    original, so ``a`` keeps the paper's meaning (a = 100 for digits-like data, 500 for faces);
  - inverter loss ``MSE(I(d, z), x) + MSE(I(s(e), z), x)`` (it learns defended and clean explanations);
  - both networks step on the gradients of the same forward pass.

  ``GNIME_VARIANTS["residual"]`` keeps genprov's earlier variant (``d = e + G(e)`` with a 4-layer conv
  generator reading the map only, raw [0, 1] units, no clipping, alternating updates) for the ablation.
  The generator is deterministic: the same explanation (and logits) always get the same defended map.
  The released distortion (:func:`measure_distortion`) is always measured on the [0, 1] maps.
* :class:`GaussianNoiseDefense` ("RND"): i.i.d. Gaussian noise of standard deviation ``sigma``; without
  clamping its distortion is ``sigma**2``. :func:`matched_gaussian_noise` measures a defense's
  distortion on data and builds the RND with the same distortion, so both cost the same utility. The
  noise of an explanation is drawn from a seed derived from ``(seed, the map's bytes)``: repeating a
  query returns the same answer (no averaging of repeated queries), and results do not depend on batching.

Fitted defenses are artefacts (:mod:`genprov.models.artifact`): ``save_pretrained(folder)`` records the
wrapped explainer (method, config, model checkpoint) with the defense's state, and
:meth:`Defense.from_pretrained` rebuilds both (``genprov-explanation-defense-v2`` folders of earlier
versions included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.config import is_int, is_positive_int, require
from genprov.exceptions import CheckpointError, ConfigError, DataError, NotFittedError
from genprov.models.artifact import ArtifactPayload, ArtifactRecord, Pretrained
from genprov.models.checkpoints import check_state
from genprov.privacy.attacks import InversionNet
from genprov.privacy.explainers import EXPLAINERS, Explainer, ExplainerConfig, Observations
from genprov.privacy.unet import ExpMIUNet
from genprov.registry import Registry
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, torch_generator
from genprov.utils.validation import check_images

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "DEFENSES",
    "GNIME_VARIANTS",
    "Defense",
    "GNIMEConfig",
    "GNIMEDefense",
    "GaussianNoiseConfig",
    "GaussianNoiseDefense",
    "NoiseGenerator",
    "matched_gaussian_noise",
    "measure_distortion",
]

#: Every defense, by kebab-case name: ``DEFENSES.create("gnime", explainer, config=GNIMEConfig(a=100))``.
DEFENSES: Registry[Defense] = Registry("defense")

_LOG_EPS = 1e-6


class Defense(Pretrained):
    """A defended explanation service: wraps an :class:`Explainer` and releases defended maps.

    A defense is no explainer itself (it has no raw attribution of its own); it offers the part of the
    explainer's interface an explanation service releases, with the same shapes and meanings:
    :meth:`explain` (defended post-processed maps), :meth:`predict` (the explainer's predictions, unaltered)
    and :meth:`observe` (both, what an attacker sees). Subclasses implement :meth:`defend`, the map of
    clean post-processed explanations to defended ones, and :meth:`_payload` / :meth:`_restore` for their
    fitted state. Saved with ``save_pretrained``; ``Defense.from_pretrained(folder)`` rebuilds the explainer
    from the recorded method, config and model checkpoint (an explainer passed as second argument
    overrides it and must have the recorded method and config; its model may differ).

    Args:
        explainer: The wrapped explainer (its model is the model explained).
        config: The defense's config (default: its :attr:`config_class` defaults).
    """

    name: ClassVar[str] = ""
    artifact_kind: ClassVar[str] = "defense"
    tensors_file: ClassVar[str] = "model.safetensors"
    config_class: ClassVar[type[ExplainerConfig]] = ExplainerConfig

    def __init__(self, explainer: Explainer, config: ExplainerConfig | None = None) -> None:
        if not isinstance(explainer, Explainer):
            raise ConfigError(
                f"A defense wraps an Explainer (e.g. EXPLAINERS.create('lrp', model)); got {explainer!r}."
            )
        if config is not None and not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} takes a {self.config_class.__name__}; got {type(config).__name__}."
            )
        self.explainer = explainer
        self.config = config if config is not None else self.config_class()

    @property
    def needs_logits(self) -> bool:
        """Whether :meth:`defend` reads the victim's logits of the explained images (GNIME's U-Net does)."""
        return False

    def logits(self, x: Tensor) -> Tensor:
        """The victim's logits of ``x`` (n, n_classes), as its model outputs them (what :meth:`defend` reads).

        Raises:
            DataError: Bad images, or a model that does not return (n, n_classes) logits.
        """
        explainer = self.explainer
        checked, _ = explainer._check(x, None)
        dev = explainer._device()

        def run(batch: Tensor, _: Tensor | None) -> Tensor:
            with torch.no_grad():
                return explainer._logits(batch.to(dev)).to("cpu", torch.float32)

        return explainer._batched(checked, None, run)

    @abstractmethod
    def defend(self, explanations: Tensor, logits: Tensor | None = None) -> Tensor:
        """Defended maps of clean post-processed explanations.

        Args:
            explanations: (n, 1, H, W) maps from the wrapped explainer's :meth:`Explainer.explain`.
            logits: (n, n_classes) the victim's logits of the same images (:meth:`logits`); required when
                :attr:`needs_logits`, ignored otherwise.

        Returns:
            (n, 1, H, W) float32 defended maps.
        """

    def explain(self, x: Tensor, target: Tensor | None = None, *, postprocess: bool = True) -> Tensor:
        """Defended explanation maps: ``defend(explainer.explain(x, target), logits(x))``.

        Args:
            x: (n, C, H, W) float images.
            target: (n,) class indices; default: the predicted classes.
            postprocess: Must be ``True``: defenses act on post-processed maps.

        Returns:
            (n, 1, H, W) float32 defended maps.

        Raises:
            ConfigError: ``postprocess=False`` (use ``defense.explainer.explain_raw`` for the raw map).
        """
        if not postprocess:
            raise ConfigError(
                f"{type(self).__name__} defends post-processed maps only; postprocess=False has no defended "
                "version. Use defense.explainer.explain_raw(x) for the clean raw map."
            )
        maps = self.explainer.explain(x, target)
        return self.defend(maps, self.logits(x) if self.needs_logits else None)

    def predict(self, x: Tensor) -> Tensor:
        """The released prediction vectors, unaltered: the wrapped explainer's :meth:`Explainer.predict`."""
        return self.explainer.predict(x)

    def observe(self, x: Tensor, target: Tensor | None = None) -> Observations:
        """Defended explanations and unaltered predictions of ``x``: what an attacker querying the service sees."""
        return Observations(explanations=self.explain(x, target), predictions=self.predict(x))

    def describe(self) -> dict[str, object]:
        """``{"name", "config", "explainer": {...}}``."""
        return {"name": self.name, "config": self.config.to_dict(), "explainer": self.explainer.describe()}

    # ------------------------------------------------------------------------------------- save / load

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """A saved config in the current fields (fields added since it was saved get their old meaning)."""
        return config

    def _state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Fitted state as ``(JSON-able metadata, named tensors)`` (none for stateless defenses)."""
        return {}, {}

    def _restore(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Inverse of :meth:`_state`."""
        return None

    def _payload(self) -> ArtifactPayload:
        meta, tensors = self._state()
        return ArtifactPayload(
            config=self.config,
            state={"explainer": self.explainer.describe(), "defense": meta},
            tensors=tensors,
            wraps={"model": self.explainer.model},
        )

    @classmethod
    def _from_record(cls, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        try:
            entry = DEFENSES.entry(record.method)
        except ConfigError as err:
            raise CheckpointError(f"{record.folder}: {err}") from err
        factory = entry.factory
        if not (isinstance(factory, type) and issubclass(factory, cls)):
            raise CheckpointError(f"{record.folder} holds a {record.method!r} defense, not a {cls.__name__}.")
        recorded = record.state.get("explainer", {})
        if wrapped is None:
            explainer = _rebuild_explainer(record, recorded)
        elif isinstance(wrapped, Explainer):
            explainer = wrapped  # any model: a defense acts on maps, whose shape it checks when used
        else:
            raise ConfigError(f"Defense.from_pretrained takes the Explainer it wraps; got {type(wrapped).__name__}.")
        diffs = _explainer_diffs(recorded, explainer.describe())
        if diffs:
            raise CheckpointError(
                f"{record.folder} was fitted for another explainer: {'; '.join(diffs)}. Pass the explainer it was "
                "fitted with (same method and config)."
            )
        try:
            config = factory.config_class.from_dict(factory.upgrade_config(dict(record.config)))
        except ConfigError as err:
            raise CheckpointError(f"{record.folder} holds an invalid config: {err}") from err
        defense = factory(explainer, config=config)
        defense._restore(dict(record.state.get("defense") or {}), tensors)
        return defense


def _rebuild_explainer(record: ArtifactRecord, recorded: Any) -> Explainer:
    """The explainer recorded in a defense artefact, on the model reopened from its checkpoint."""
    model = record.wrapped("model", None)
    if model is None or not isinstance(recorded, dict):
        raise CheckpointError(
            f"The defense at {record.folder} records no explainer model; pass the explainer: "
            "Defense.from_pretrained(folder, explainer)."
        )
    name, config = str(recorded.get("name")), dict(recorded.get("config") or {})
    config_type = EXPLAINERS.config_type(name) or ExplainerConfig
    return EXPLAINERS.create(name, model, config=config_type.from_dict(config))


def _upgrade_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``genprov-explanation-defense-v2`` config.json in the artefact layout."""
    return {
        **raw,
        "kind": "defense",
        "state": {"explainer": raw.get("explainer"), "defense": raw.get("state")},
        "tensors": "model.safetensors" if raw.get("has_weights") else None,
    }


Defense.legacy_formats = {"genprov-explanation-defense-v2": _upgrade_v2}


def _explainer_diffs(recorded: Any, given: dict[str, object]) -> list[str]:
    if not isinstance(recorded, dict):
        return ["no explainer recorded"]
    diffs = []
    if recorded.get("name") != given.get("name"):
        diffs.append(f"method {recorded.get('name')!r} recorded, {given.get('name')!r} given")
    rc = {k: v for k, v in dict(recorded.get("config") or {}).items() if k != "batch_size"}
    gc_ = given.get("config")
    gc = {k: v for k, v in dict(gc_ if isinstance(gc_, dict) else {}).items() if k != "batch_size"}
    for key in sorted(set(rc) | set(gc)):
        if rc.get(key) != gc.get(key):
            diffs.append(f"{key}={rc.get(key)!r} recorded, {gc.get(key)!r} given")
    return diffs


def _check_maps(explanations: object, name: str = "explanations") -> Tensor:
    e = check_images(explanations, name, value_range=None).detach().to(torch.float32)
    return e


# -------------------------------------------------------------------------------------- Gaussian noise


@dataclasses.dataclass(frozen=True, kw_only=True)
class GaussianNoiseConfig(ExplainerConfig):
    """RND settings.

    Attributes:
        sigma: Standard deviation of the noise added to each pixel of the [0, 1] maps.
        clamp: Clip the defended maps to [0, 1] (then the distortion is below ``sigma**2``).
        seed: Seed from which each map's noise is derived (together with the map's content).
    """

    sigma: float = 0.1
    clamp: bool = False
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma >= 0,
            "sigma",
            "a finite number >= 0",
            self.sigma,
        )
        require(isinstance(self.clamp, bool), "clamp", "True or False", self.clamp)
        require(is_int(self.seed, minimum=0), "seed", "a non-negative integer", self.seed)


def _content_seed(seed: int, row: Tensor) -> int:
    digest = hashlib.blake2b(np.ascontiguousarray(row.numpy()).tobytes(), digest_size=8).hexdigest()
    return derive_seed(seed, "rnd", digest)


@DEFENSES.register("gaussian-noise", config=GaussianNoiseConfig)
class GaussianNoiseDefense(Defense):
    """RND: Gaussian noise on each explanation map.

    Args:
        explainer: The wrapped explainer.
        config: Noise level, clamping and seed.
    """

    name = "gaussian-noise"
    config: GaussianNoiseConfig
    config_class = GaussianNoiseConfig
    #: the distortion this RND was matched to by :func:`matched_gaussian_noise` (``None`` otherwise)
    matched_distortion: float | None = None

    def noise(self, explanations: Tensor) -> Tensor:
        """(n, 1, H, W) standard-normal noise, map i's from ``(seed, bytes of map i)``."""
        e = _check_maps(explanations)
        out = torch.empty_like(e)
        for i in range(len(e)):
            gen = torch.Generator().manual_seed(_content_seed(self.config.seed, e[i]))
            out[i] = torch.randn(e.shape[1:], generator=gen)
        return out

    def defend(self, explanations: Tensor, logits: Tensor | None = None) -> Tensor:
        """``e + sigma * noise`` (clipped to [0, 1] when ``clamp``; ``logits`` unused); see :class:`Defense.defend`."""
        e = _check_maps(explanations)
        out = e + self.config.sigma * self.noise(e)
        return out.clamp(0.0, 1.0) if self.config.clamp else out

    @classmethod
    def for_distortion(
        cls,
        explainer: Explainer,
        distortion: float,
        *,
        explanations: Tensor | None = None,
        clamp: bool = False,
        seed: int = 0,
        batch_size: int = 256,
    ) -> GaussianNoiseDefense:
        """The RND whose distortion is ``distortion``.

        Without clamping ``sigma = sqrt(distortion)``. With clamping the distortion is measured on
        ``explanations`` (required) and ``sigma`` is found by bisection.

        Args:
            explainer: The explainer to wrap.
            distortion: Target mean squared difference between defended and clean maps.
            explanations: (n, 1, H, W) clean maps to calibrate on (needed when ``clamp``).
            clamp: Clip defended maps to [0, 1].
            seed: Noise seed.
            batch_size: Explanation batch size of the returned defense.

        Raises:
            ConfigError: A negative distortion, a clamped target the maps cannot reach, or no maps to
                calibrate a clamped defense on.
        """
        require(
            isinstance(distortion, (int, float)) and math.isfinite(distortion) and distortion >= 0,
            "distortion",
            "a finite number >= 0",
            distortion,
        )

        def make(sigma: float) -> GaussianNoiseDefense:
            return cls(explainer, GaussianNoiseConfig(sigma=sigma, clamp=clamp, seed=seed, batch_size=batch_size))

        if not clamp or distortion == 0:
            return make(math.sqrt(distortion))
        if explanations is None:
            raise ConfigError(
                "A clamped RND needs explanations to calibrate sigma on; pass explanations=explainer.explain(x)."
            )
        e = _check_maps(explanations)
        noise = make(1.0).noise(e)

        def measured(sigma: float) -> float:
            return float(((e + sigma * noise).clamp(0, 1) - e).pow(2).mean())

        lo, hi = 0.0, 1.0
        while measured(hi) < distortion:
            hi *= 2
            if hi > 1e4:
                raise ConfigError(
                    f"distortion={distortion} cannot be reached by clamped Gaussian noise on these maps "
                    f"(at most {measured(hi):.4g}); use clamp=False."
                )
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if measured(mid) < distortion else (lo, mid)
        return make((lo + hi) / 2)


# ----------------------------------------------------------------------------------------------- GNIME

#: The two GNIME variants, as the fields of :class:`GNIMEConfig` each one sets (the rest are shared):
#:
#: * ``"unet"`` (default), the original's (WSP-LAB/GNIME ``scripts/models.py:141-213``,
#:   ``scripts/train_mnist_grad.py:64-81``): an :class:`~genprov.privacy.unet.ExpMIUNet` reading the
#:   standardised map and the victim's logits and outputting the defended map; distortion measured on
#:   standardised maps; defended maps clipped to [0, 1]; linear surrogate inverter without a clamp in the
#:   privacy term; simultaneous updates of both networks.
#: * ``"residual"``, genprov's earlier variant (kept for the ablation): a 4-layer fully convolutional
#:   :class:`NoiseGenerator` adding noise to the map it alone reads; distortion on raw [0, 1] maps; no
#:   clipping; the surrogate's reconstruction clamped to [-1, 1] inside the privacy term; alternating
#:   updates; the surrogate reads the released probabilities (it was trained with Adam at lr 1e-3).
#:
#: The training budget (``n_epochs``, ``train_batch_size``, ``lr``) is shared by both variants.
GNIME_VARIANTS: dict[str, dict[str, Any]] = {
    "unet": {
        "generator": "unet",
        "prediction_input": "logits",
        "standardize": True,
        "clamp": True,
        "privacy_clamp": False,
        "updates": "simultaneous",
    },
    "residual": {
        "generator": "residual",
        "prediction_input": "prob",
        "standardize": False,
        "clamp": False,
        "privacy_clamp": True,
        "updates": "alternating",
    },
}

_PREDICTION_INPUTS = ("logits", "prob", "log-prob")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GNIMEConfig(ExplainerConfig):
    """GNIME settings; the defaults are the original's variant (``GNIME_VARIANTS["unet"]``).

    Attributes:
        a: Weight of the privacy term (the surrogate inverter's error on images in [0, 1]) against the
            distortion (paper: 100 for MNIST-like data, 500 for faces). With ``standardize`` the distortion
            is measured on standardised maps, as in the original, so ``a`` has the paper's meaning; without
            it (the residual variant) on raw [0, 1] maps, where the same ``a`` weighs privacy about
            ``1 / std**2`` times more (a = 100 there is about a = 5-8 in the paper's units on digits).
        generator: ``"unet"`` (the original's: an ExpMI U-Net reading the map and the prediction vector,
            outputting the defended map) or ``"residual"`` (:class:`NoiseGenerator`: adds noise computed from
            the map alone).
        width: Channels of the generator: the U-Net's full-resolution level (original: 64 at 32x32), or
            the residual generator's conv layers.
        n_layers: Conv layers of the residual generator (at least 2; unused by the U-Net).
        inverter_width: ``width`` of the surrogate inverter (an ExpMI decoder).
        inverter_depth: ``depth`` of the surrogate inverter.
        prediction_input: How the generator and the surrogate inverter read the victim's prediction:
            ``"logits"`` (as the victim outputs them, the original's), ``"prob"`` (the released softmax)
            or ``"log-prob"`` (``log(p + 1e-6)``).
        standardize: Standardise the maps by the defender's mean and std before the generator and
            measure the distortion there (the original's units); the surrogate's clean input is then the
            standardised map too (models.py:171-181).
        clamp: Clip defended maps to [0, 1], in training and at release (the original clips both).
        privacy_clamp: Clamp the surrogate's reconstruction to [-1, 1] inside the privacy term (genprov's
            earlier variant; it zeroes the generator's gradient where the surrogate overshoots).
        updates: ``"simultaneous"`` (one forward pass, both networks step on its gradients: the
            original's ``train_step``, models.py:193-211) or ``"alternating"`` (the surrogate steps, then
            the generator against the updated surrogate).
        n_epochs: Training epochs over the defender's data (``ceil(n / train_batch_size)`` steps each).
        train_batch_size: Training batch size (original: 1024 maps of 35,000).
        lr: Adam learning rate of the generator (original: 1e-4, train_mnist_grad.py:64).
        inverter_lr: Adam learning rate of the surrogate inverter (original: 1e-4, train_mnist_grad.py:65).
        seed: Seed of the initial weights and the batch order.
    """

    a: float = 100.0
    generator: Literal["unet", "residual"] = "unet"
    width: int = 32
    n_layers: int = 4
    inverter_width: int = 32
    inverter_depth: int = 2
    prediction_input: Literal["logits", "prob", "log-prob"] = "logits"
    standardize: bool = True
    clamp: bool = True
    privacy_clamp: bool = False
    updates: Literal["simultaneous", "alternating"] = "simultaneous"
    n_epochs: int = 30
    train_batch_size: int = 64
    lr: float = 1e-4
    inverter_lr: float = 1e-4
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        require(
            isinstance(self.a, (int, float)) and math.isfinite(self.a) and self.a >= 0, "a", "a number >= 0", self.a
        )
        require(self.generator in GNIME_VARIANTS, "generator", "'unet' or 'residual'", self.generator)
        require(is_positive_int(self.width), "width", "a positive integer", self.width)
        require(is_int(self.n_layers, minimum=2), "n_layers", "an integer >= 2", self.n_layers)
        require(is_positive_int(self.inverter_width), "inverter_width", "a positive integer", self.inverter_width)
        require(
            is_int(self.inverter_depth, minimum=0) and self.inverter_depth <= 6,
            "inverter_depth",
            "an integer in [0, 6]",
            self.inverter_depth,
        )
        require(
            self.prediction_input in _PREDICTION_INPUTS,
            "prediction_input",
            "'logits', 'prob' or 'log-prob'",
            self.prediction_input,
        )
        for flag in ("standardize", "clamp", "privacy_clamp"):
            require(isinstance(getattr(self, flag), bool), flag, "True or False", getattr(self, flag))
        require(
            self.updates in ("simultaneous", "alternating"), "updates", "'simultaneous' or 'alternating'", self.updates
        )
        require(is_positive_int(self.n_epochs), "n_epochs", "a positive integer", self.n_epochs)
        require(is_positive_int(self.train_batch_size), "train_batch_size", "a positive integer", self.train_batch_size)
        require(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", "a positive number", self.lr)
        require(
            isinstance(self.inverter_lr, (int, float)) and self.inverter_lr > 0,
            "inverter_lr",
            "a positive number",
            self.inverter_lr,
        )
        require(is_int(self.seed, minimum=0), "seed", "a non-negative integer", self.seed)


class NoiseGenerator(nn.Module):
    """The residual variant's noise generator: a fully convolutional net from a map (n, C, H, W) to noise of
    its shape (genprov's earlier GNIME; the original's generator is :class:`~genprov.privacy.unet.ExpMIUNet`).

    Args:
        channels: Channels of the maps (1 for genprov's explanations).
        width: Feature maps of the hidden layers.
        n_layers: Number of 3x3 conv layers (LeakyReLU between them; the last one is linear and starts
            near zero, so training starts from almost no noise).
    """

    def __init__(self, channels: int, width: int, n_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for _ in range(n_layers - 1):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.LeakyReLU(0.2)]
            c = width
        last = nn.Conv2d(c, channels, 3, padding=1)
        with torch.no_grad():
            last.weight.mul_(0.01)
            if last.bias is not None:
                last.bias.zero_()
        layers.append(last)
        self.body = nn.Sequential(*layers)

    def forward(self, e: Tensor) -> Tensor:
        """(n, C, H, W) maps -> (n, C, H, W) noise."""
        out: Tensor = self.body(e)
        return out


def _prediction_features(logits: Tensor, kind: str) -> Tensor:
    """The prediction vector as GNIME's networks read it (``prediction_input``) from the victim's logits."""
    if kind == "logits":
        return logits
    p = F.softmax(logits, dim=1)
    return torch.log(p + _LOG_EPS) if kind == "log-prob" else p


@DEFENSES.register("gnime", config=GNIMEConfig)
class GNIMEDefense(Defense):
    """GNIME: learned noise that keeps explanations close while making them hard to invert.

    The default (``generator="unet"``) follows the original (WSP-LAB/GNIME ``scripts/models.py:141-213``):
    with ``s(e) = (e - mean) / std`` the defender's standardisation (train_mnist_grad.py:72-73),

    - defended map ``d = clip(std * G(s(e), z) + mean, 0, 1)`` with ``z`` the victim's logits
      (models.py:171-175);
    - generator loss ``MSE(G(s(e), z), s(e)) - a * MSE(I(d, z), x)`` (models.py:173, 180, 197) with ``x`` in
      [0, 1] and the surrogate ``I`` linear (no clamp);
    - surrogate loss ``MSE(I(d, z), x) + MSE(I(s(e), z), x)`` (models.py:177-181);
    - both networks step on the gradients of one forward pass (models.py:193-211).

    The residual variant (``GNIME_VARIANTS["residual"]``) is genprov's earlier one: ``d = e + G(e)``, raw
    units, no clipping, clamped privacy term, alternating updates. The generator is deterministic: the same
    explanation (and logits) always get the same defended map.

    Args:
        explainer: The wrapped explainer (its model is the victim classifier).
        config: Weight ``a``, architectures and training settings.

    Attributes:
        generator_: The trained generator (:class:`~genprov.privacy.unet.ExpMIUNet` or
            :class:`NoiseGenerator`; eval mode).
        inverter_: The surrogate inverter trained alongside (eval mode).
        map_shape_: ``(1, H, W)`` of the explanations it was fitted on.
        image_shape_: ``(C, H, W)`` of the inputs.
        n_classes_: Length of the prediction vectors.
        map_mean_: Mean of the defender's clean maps (the standardisation; 0 without ``standardize``).
        map_std_: Their std (1 without ``standardize``).
        history_: Per epoch ``{"epoch", "step", "distortion", "distortion_raw", "privacy",
            "inverter_mse_defended", "inverter_mse_clean", "generator_loss"}``: means over the epoch's
            batches; ``step`` counts the training steps so far; ``distortion`` is the generator's
            distortion term (standardised units with ``standardize``), ``distortion_raw`` the same on [0, 1]
            maps; the MSEs are on images in [0, 1].
    """

    name = "gnime"
    config: GNIMEConfig
    config_class = GNIMEConfig

    generator_: nn.Module
    inverter_: InversionNet
    map_shape_: tuple[int, int, int]
    image_shape_: tuple[int, int, int]
    n_classes_: int
    map_mean_: float
    map_std_: float
    history_: list[dict[str, float]]

    @property
    def needs_logits(self) -> bool:
        """The U-Net generator reads the victim's logits; the residual one reads the map alone."""
        return self.config.generator == "unet"

    @classmethod
    def upgrade_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Configs saved before the variants existed (no ``generator`` field) were the residual variant."""
        return config if "generator" in config else {**GNIME_VARIANTS["residual"], **config}

    def _build(self) -> tuple[nn.Module, InversionNet]:
        cfg = self.config
        c, h, w = self.map_shape_
        gen: nn.Module
        if cfg.generator == "unet":
            gen = ExpMIUNet(c, c, (h, w), self.n_classes_, cfg.width)
        else:
            gen = NoiseGenerator(c, cfg.width, cfg.n_layers)
        inv = InversionNet(self.image_shape_, self.n_classes_, cfg.inverter_width, cfg.inverter_depth, c)
        return gen, inv

    def _generate(self, e: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(defended map, generator output in the distortion's units, input in those units)``."""
        if self.config.generator == "residual":
            d = e + self.generator_(e)
            return (d.clamp(0.0, 1.0) if self.config.clamp else d), d, e
        s = (e - self.map_mean_) / self.map_std_
        g = self.generator_(s, z)
        d = g * self.map_std_ + self.map_mean_
        return (d.clamp(0.0, 1.0) if self.config.clamp else d), g, s

    def fit(
        self,
        x: Tensor,
        target: Tensor | None = None,
        *,
        show_progress: bool | None = None,
        device: str | torch.device = "cpu",
    ) -> Self:
        """Train the noise generator and the surrogate inverter on the defender's data.

        Args:
            x: (n, C, H, W) the defender's images in [-1, 1] (n >= 2).
            target: (n,) classes to explain; default: the predicted classes (as at release time).
            show_progress: Draw a progress bar (default: when stderr is a terminal).
            device: Where to train (e.g. ``"cuda"``); the networks stay there, defended maps come back on
                the CPU.

        Returns:
            ``self``.

        Raises:
            DataError: Bad images or fewer than 2 of them; a loss that is not finite.
        """
        cfg = self.config
        x = check_images(x, "x").detach().to(torch.float32)
        if len(x) < 2:
            raise DataError(f"GNIME needs at least 2 training images; got {len(x)}.")
        e_all = self.explainer.explain(x, target).detach().to(torch.float32)
        z_all = self.logits(x)
        self.map_shape_ = (int(e_all.shape[1]), int(e_all.shape[2]), int(e_all.shape[3]))
        self.image_shape_ = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        self.n_classes_ = int(z_all.shape[1])
        # train_mnist_grad.py:72-73: one mean and std over all the defender's maps
        self.map_mean_ = float(e_all.double().mean()) if cfg.standardize else 0.0
        self.map_std_ = float(e_all.double().std(unbiased=False)) if cfg.standardize else 1.0
        if not self.map_std_ > 0:
            raise DataError("GNIME's standardisation needs maps that vary; all the defender's maps are constant.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, "gnime-init"))
            gen, inv = self._build()
        dev = torch.device(device)
        gen.to(dev)
        inv.to(dev)
        self.generator_, self.inverter_ = gen, inv
        p_all = _prediction_features(z_all, cfg.prediction_input).to(dev)
        e_all, x01_all = e_all.to(dev), ((x + 1) / 2).to(dev)
        opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr)
        opt_i = torch.optim.Adam(inv.parameters(), lr=cfg.inverter_lr)
        step_fn = self._simultaneous_step if cfg.updates == "simultaneous" else self._alternating_step
        self.history_ = []
        gen.train()
        inv.train()
        step = 0
        for epoch in progress(range(cfg.n_epochs), desc="training GNIME", show=show_progress):
            sums = dict.fromkeys(_HISTORY_KEYS, 0.0)
            order = torch.randperm(len(x), generator=torch_generator(cfg.seed, "gnime-epoch", epoch)).to(dev)
            for idx in order.split(cfg.train_batch_size):
                losses = step_fn(e_all[idx], p_all[idx], x01_all[idx], opt_g, opt_i)
                step += 1
                for k, v in losses.items():
                    sums[k] += float(v) * len(idx)
            entry = {"epoch": float(epoch), "step": float(step), **{k: v / len(x) for k, v in sums.items()}}
            if not all(math.isfinite(v) for v in entry.values()):
                raise DataError(f"GNIME training diverged at epoch {epoch} ({entry}); lower lr or a.")
            self.history_.append(entry)
        self.generator_ = gen.eval()
        self.inverter_ = inv.eval()
        return self

    def _losses(self, e: Tensor, p: Tensor, x01: Tensor, *, detach_defended: bool) -> dict[str, Tensor]:
        """One forward pass's terms (models.py:170-183); ``detach_defended``: the surrogate's view only."""
        cfg = self.config
        d, g, s = self._generate(e, p)
        if detach_defended:
            d = d.detach()
        rec_defended = (self.inverter_(p, d) + 1) / 2
        clean_in = s if cfg.standardize else e  # models.py:171,177: the clean map as the generator reads it
        inverter_mse_clean = F.mse_loss((self.inverter_(p, clean_in) + 1) / 2, x01)
        inverter_mse_defended = F.mse_loss(rec_defended, x01)
        privacy = F.mse_loss(rec_defended.clamp(0.0, 1.0), x01) if cfg.privacy_clamp else inverter_mse_defended
        distortion = F.mse_loss(g, s)
        return {
            "distortion": distortion,
            "distortion_raw": F.mse_loss(d.detach(), e),
            "privacy": privacy,
            "inverter_mse_defended": inverter_mse_defended,
            "inverter_mse_clean": inverter_mse_clean,
            "generator_loss": distortion - cfg.a * privacy,
        }

    def _simultaneous_step(
        self, e: Tensor, p: Tensor, x01: Tensor, opt_g: torch.optim.Optimizer, opt_i: torch.optim.Optimizer
    ) -> dict[str, float]:
        """models.py:193-211: both gradients from one forward pass, then both optimisers step."""
        losses = self._losses(e, p, x01, detach_defended=False)
        inv_params = list(self.inverter_.parameters())
        gen_params = list(self.generator_.parameters())
        inv_loss = losses["inverter_mse_defended"] + losses["inverter_mse_clean"]
        grads_i = torch.autograd.grad(inv_loss, inv_params, retain_graph=True)
        grads_g = torch.autograd.grad(losses["generator_loss"], gen_params)
        for params, grads in ((inv_params, grads_i), (gen_params, grads_g)):
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad
        opt_i.step()
        opt_g.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _alternating_step(
        self, e: Tensor, p: Tensor, x01: Tensor, opt_g: torch.optim.Optimizer, opt_i: torch.optim.Optimizer
    ) -> dict[str, float]:
        """genprov's earlier schedule: the surrogate steps on the current defended maps, then the generator
        steps against the updated surrogate."""
        inv_losses = self._losses(e, p, x01, detach_defended=True)
        opt_i.zero_grad(set_to_none=True)
        (inv_losses["inverter_mse_defended"] + inv_losses["inverter_mse_clean"]).backward()
        opt_i.step()
        losses = self._losses(e, p, x01, detach_defended=False)
        opt_g.zero_grad(set_to_none=True)
        losses["generator_loss"].backward()
        opt_g.step()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["inverter_mse_defended"] = float(inv_losses["inverter_mse_defended"].detach())
        out["inverter_mse_clean"] = float(inv_losses["inverter_mse_clean"].detach())
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "generator_") or not hasattr(self, "history_"):
            raise NotFittedError(
                "This GNIMEDefense is not fitted yet; call .fit(x) with the defender's images first "
                "(or reopen a fitted one with Defense.from_pretrained(folder))."
            )

    def defend(self, explanations: Tensor, logits: Tensor | None = None) -> Tensor:
        """The defended maps (see the class docstring); see :meth:`Defense.defend`.

        Raises:
            NotFittedError: Before :meth:`fit`.
            DataError: Maps of another shape than fitted on (the message names both); the U-Net generator
                without ``logits`` or with logits of another shape.
        """
        self._check_fitted()
        e = _check_maps(explanations)
        if tuple(e.shape[1:]) != self.map_shape_:
            raise DataError(
                f"explanations must have shape (n, {', '.join(map(str, self.map_shape_))}) (what GNIME was fitted "
                f"on); got {tuple(e.shape)}."
            )
        if self.needs_logits:
            if logits is None:
                raise DataError(
                    "GNIME's U-Net generator reads the victim's logits: call defense.explain(x), or "
                    "defense.defend(maps, defense.logits(x)) with the images the maps explain."
                )
            if tuple(logits.shape) != (len(e), self.n_classes_):
                raise DataError(
                    f"logits must have shape ({len(e)}, {self.n_classes_}) (one row per map); got {tuple(logits.shape)}."
                )
            p = _prediction_features(logits.detach().to(torch.float32), self.config.prediction_input)
        else:
            p = torch.zeros(len(e), 0)
        dev = next(self.generator_.parameters()).device
        bs = self.config.batch_size
        with torch.no_grad():
            parts = [
                self._generate(e[i : i + bs].to(dev), p[i : i + bs].to(dev))[0].to("cpu") for i in range(0, len(e), bs)
            ]
        return torch.cat(parts) if parts else e.clone()

    def _state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        self._check_fitted()
        tensors = {f"generator.{k}": v for k, v in self.generator_.state_dict().items()}
        tensors.update({f"inverter.{k}": v for k, v in self.inverter_.state_dict().items()})
        meta = {
            "map_shape": list(self.map_shape_),
            "image_shape": list(self.image_shape_),
            "n_classes": self.n_classes_,
            "map_mean": self.map_mean_,
            "map_std": self.map_std_,
            "history": self.history_,
        }
        return meta, tensors

    def _restore(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        try:
            map_shape = tuple(int(v) for v in meta["map_shape"])
            image_shape = tuple(int(v) for v in meta["image_shape"])
            n_classes = int(meta["n_classes"])
            mean, std = float(meta.get("map_mean", 0.0)), float(meta.get("map_std", 1.0))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"The saved GNIME state lacks its shapes ({err}); re-fit and save it.") from err
        if len(map_shape) != 3 or len(image_shape) != 3:
            raise CheckpointError(f"The saved GNIME shapes are invalid: {map_shape}, {image_shape}.")
        self.map_shape_ = (map_shape[0], map_shape[1], map_shape[2])
        self.image_shape_ = (image_shape[0], image_shape[1], image_shape[2])
        self.n_classes_ = n_classes
        self.map_mean_, self.map_std_ = mean, std
        try:
            gen, inv = self._build()
        except DataError as err:
            raise CheckpointError(f"The saved GNIME state does not fit its config: {err}") from err
        expected = {f"generator.{k}": v for k, v in gen.state_dict().items()}
        expected.update({f"inverter.{k}": v for k, v in inv.state_dict().items()})
        check_state(expected, tensors, where="the saved GNIME weights", hint=" Re-fit and save the defense.")
        gen.load_state_dict({k[len("generator.") :]: v for k, v in tensors.items() if k.startswith("generator.")})
        inv.load_state_dict({k[len("inverter.") :]: v for k, v in tensors.items() if k.startswith("inverter.")})
        self.generator_, self.inverter_ = gen.eval(), inv.eval()
        self.history_ = [dict(h) for h in meta.get("history", [])]


_HISTORY_KEYS = (
    "distortion",
    "distortion_raw",
    "privacy",
    "inverter_mse_defended",
    "inverter_mse_clean",
    "generator_loss",
)


# -------------------------------------------------------------------------------------------- helpers


def measure_distortion(defense: Defense, x: Tensor, target: Tensor | None = None) -> float:
    """The defense's explanation distortion on ``x``: mean of ``(defended - clean)**2`` over pixels and images.

    Args:
        defense: A (fitted) defense.
        x: (n, C, H, W) images.
        target: (n,) classes to explain; default: the predicted classes.

    Returns:
        The distortion (lower = more useful explanations).
    """
    clean = defense.explainer.explain(x, target)
    defended = defense.defend(clean, defense.logits(x) if defense.needs_logits else None)
    return float((defended.double() - clean.double()).pow(2).mean())


def matched_gaussian_noise(
    defense: Defense, x: Tensor, target: Tensor | None = None, *, clamp: bool = False, seed: int = 0
) -> GaussianNoiseDefense:
    """The RND with the same distortion as ``defense`` measured on ``x`` (equal utility cost).

    Args:
        defense: A fitted defense (typically :class:`GNIMEDefense`).
        x: (n, C, H, W) images on which the distortion is measured.
        target: (n,) classes to explain; default: the predicted classes.
        clamp: Clip the RND's maps to [0, 1] (sigma is then calibrated on ``x``'s maps).
        seed: The RND's noise seed.

    Returns:
        A :class:`GaussianNoiseDefense` around the same explainer; its ``matched_distortion`` attribute
        holds the distortion it was matched to.
    """
    clean = defense.explainer.explain(x, target)
    target_distortion = measure_distortion(defense, x, target)
    rnd = GaussianNoiseDefense.for_distortion(
        defense.explainer,
        target_distortion,
        explanations=clean,
        clamp=clamp,
        seed=seed,
        batch_size=defense.config.batch_size,
    )
    rnd.matched_distortion = target_distortion
    return rnd
