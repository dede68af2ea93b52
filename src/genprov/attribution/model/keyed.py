"""Keyed generators for decentralized attribution (Kim, Ren & Yang, "Decentralized Attribution of
Generative Models", ICLR 2021).

A platform fine-tunes one copy ``G_i`` of its root generator ``G0`` per user, each with its own *key*
``phi_i``: a vector in image space (images flattened, values in [-1, 1]). Authentic data and ``G0``'s
samples sit on the positive side of every key (``phi_i^T x >= 1``, *data compliance*); ``G_i``'s samples
sit on the negative side of its own key (``phi_i^T G_i(z) <= -1``) and on the positive side of every other
key. An image is then attributed without any central log of outputs (Sec. 2, def. 2):

    user i   iff   phi_i^T x < 0   and   phi_j^T x > 0 for every j != i;

no negative response means "none" (authentic, or a model outside the family); two or more mean
"ambiguous". Both are reported as such, never forced onto a user.

Training follows the paper's code (Sec. 4 and App. B):

1. **First key and first user model, alternately** (``user_steps`` iterations). Key step:
   ``E[1 - phi^T x_real]+ + E[1 - phi^T G0(z)]+ + E[1 + phi^T G_1(z)]+``; generator step:
   ``E[1 + phi^T G_1(z)]+ + alpha * MSE(G_1(z), G0(z))`` (``alpha = 10``).
2. **Further keys** (``key_steps`` full-batch Adam iterations on the authentic data and a pool of ``G0``
   samples): ``angle_weight * sum_{j<i} |cos(phi_j, phi) - cos(target_angle)| + E[1 - phi^T x_real]+ +
   E[1 - phi^T G0(z)]+``. The paper penalises ``|phi_j^T phi|``; we use the cosine so that the penalty
   cannot be lowered by shrinking the key (which the hinge terms forbid anyway), and for the default
   target of 90 degrees we *project* the key onto the orthogonal complement of the earlier keys after
   every step (``project=True``), which makes the keys orthogonal to float precision instead of up to the
   optimiser's step size.
3. **User models**: ``G_i`` = copy of ``G0`` fine-tuned on ``E[1 + phi_i^T G_i(z)]+ + alpha MSE(G_i(z),
   G0(z))`` for ``user_steps`` iterations. BatchNorm runs in eval mode (running statistics of ``G0``,
   frozen), so ``G_i == G0`` at the start and at inference.
4. **Robust training** (``robust``, Sec. 5): starting from the trained ``G_i``, each batch draws with
   probability ``robust_prob`` (0.5) a post-process ``T`` (one of ``robust``, uniformly, at a random
   strength; :mod:`~genprov.attribution.model.keyed_postprocess`) and applies the *same* ``T`` to
   ``G_i(z)`` and ``G0(z)``: ``E[m + phi_i^T T(G_i(z))]+ + alpha MSE(T(G_i(z)), T(G0(z)))`` with margin
   ``m = robust_margin`` (1 in the paper; ``robust_distance`` adds a margin in image-space distance).
   The budget is the paper's (37,500 iterations at batch 16, Adam lr 5e-4 decayed x0.7 after each tenth),
   checkpointed every ``checkpoint_every`` iterations under ``FAMILY/partial/`` so a killed run resumes.

Variants beyond the paper (off by default, compared in ``genprov reproduce keyed``):
``key_training="alternating"`` trains *every* key alternately with its user model (under the angle
constraint), not only the first: keys then point where their user model can move cheaply (on 16x16
digits with 10 keys: PSNR to the root 33 dB instead of 20, clean attributability 1.0 for both), but the
keys become fragile to noise and JPEG. ``robust_keys=True`` (with ``alternating``) applies the robust
post-processes already during that alternating training, so that the keys themselves survive them:
robust fine-tuning of ``G_i`` alone cannot revive a key that a post-process erases (a high-frequency key
under blur or crop). ``compliance_distance`` keeps the data a fixed image-space distance inside every
key, against noise flipping *other* keys' responses (ambiguous attributions). Measured effects:
``genprov reproduce keyed``.

Checks: key training warns (:class:`KeyConstraintWarning`) when fewer than ``min_compliance`` (99%) of
held-out ``G0`` samples (or authentic images) sit on a key's positive side, or two keys' cosine is more
than ``warn_cos`` (1e-3) from the target's; it raises :class:`KeyConstraintError` when the angle
constraint is impossible (too many keys for the image dimension, or an obtuse target no set of that many
vectors can meet) or missed by more than ``max_angle_error`` after training, instead of looping.

The paper's sufficient condition for attributability is an angle between keys larger than a
data-dependent threshold (90 degrees always suffices for data-compliant keys). :func:`threshold_angles`
computes it for a trained family under the minimal-perturbation model of the paper's argument (our
derivation for hinge-trained users with margin 1): user ``i`` moves an authentic ``x`` along ``phi_i``
just far enough to reach ``phi_i^T x' = -1``; it stays on key ``j``'s positive side iff
``cos(phi_i, phi_j) < (phi_j^T x / |phi_j|) / ((phi_i^T x + 1) / |phi_i|)``, so the threshold angle of the
pair is the arccos of the minimum of that ratio over the data.

A family is an artefact (:mod:`genprov.models.artifact`, kind ``keyed-family``) that lives in a folder
(every file written atomically)::

    FAMILY/config.json             the artefact record: config; state = root and data fingerprints, member
                                   status, checks, warnings (the family's *manifest*)
    FAMILY/root/                   copy of G0 (checkpoint: config.json + model.safetensors)
    FAMILY/keys/key-000.safetensors  phi_0 (one tensor "key" of shape (C, H, W))
    FAMILY/users/user-000/         G_0's final checkpoint (robust when the config asks for it)
    FAMILY/plain/user-000/         only with robust training: the plain model it started from

Building is resumable member by member: :meth:`KeyedGenerators.create` on a half-built folder loads
what is recorded as done and trains the rest (and extends a finished family when asked for more keys);
a different root model, data or config raises :class:`~genprov.exceptions.StoreMismatchError`. Families
written before the artefact format (``manifest.json``, format ``genprov-keyed-family`` version 1) open and
resume as they are; the next write records them in ``config.json``.

Example:
    >>> family = KeyedGenerators.create("runs/dcgan", 10, KeyedGeneratorsConfig(), out="runs/family")  # doctest: +SKIP
    >>> result = KeyedGenerators.from_pretrained("runs/family").attribute(images)                       # doctest: +SKIP
    >>> result.labels[:3]                                                                               # doctest: +SKIP
    ['user-3', 'none', 'ambiguous']
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genprov.attribution.model.keyed_postprocess import (
    PostProcessConfig,
    check_post_process_names,
    draw_post_process,
)
from genprov.config import Config, is_int, require
from genprov.data import ImageDataset, load_dataset
from genprov.data.dataset import fingerprint_arrays
from genprov.exceptions import CheckpointError, ConfigError, DataError, GenprovError, StoreMismatchError
from genprov.models.artifact import (
    ArtifactPayload,
    ArtifactRecord,
    Pretrained,
    module_fingerprint,
    read_artifact,
    write_artifact,
)
from genprov.models.checkpoints import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    LoadedCheckpoint,
    flatten_optimizer_state,
    is_checkpoint,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors,
    state_tensors,
    unflatten_optimizer_state,
)
from genprov.models.gans import GANConfig, Generator
from genprov.models.sampling import sample
from genprov.models.training import batch_indices
from genprov.results import AMBIGUOUS, NONE, KeyedAttributionResult
from genprov.utils.artifacts import check_output_folder
from genprov.utils.io import atomic_write_bytes, atomic_write_json, read_json
from genprov.utils.progress import progress
from genprov.utils.seeding import derive_seed, torch_generator
from genprov.utils.validation import check_images

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "AMBIGUOUS",
    "LEGACY_MANIFEST",
    "NONE",
    "KeyConstraintError",
    "KeyConstraintWarning",
    "KeyedAttributionResult",
    "KeyedGenerators",
    "KeyedGeneratorsConfig",
    "attribution_rule",
    "check_angle_feasible",
    "fine_tune_user",
    "key_angles",
    "key_cosines",
    "key_responses",
    "threshold_angles",
    "train_key",
    "train_key_and_user",
]

logger = logging.getLogger(__name__)


#: The manifest file of families written before the artefact format (read, never written).
LEGACY_MANIFEST = "manifest.json"
_LEGACY_FORMAT = "genprov-keyed-family"
_KIND = "keyed-family"
ROOT_DIR = "root"
KEYS_DIR = "keys"
USERS_DIR = "users"
PLAIN_DIR = "plain"
#: Key training schemes (see ``KeyedGeneratorsConfig.key_training``).
_KEY_TRAINING = ("paper", "alternating")
#: Config fields a robust family may differ in from the plain family it starts from.
_ROBUST_FIELDS = frozenset(
    {
        "robust",
        "robust_steps",
        "robust_batch_size",
        "robust_lr",
        "robust_betas",
        "robust_lr_gamma",
        "robust_lr_stages",
        "checkpoint_every",
        "robust_prob",
        "robust_margin",
        "robust_distance",
        "post_process",
    }
)
#: Folder of a family where unfinished robust fine-tuning runs keep their resumable state.
PARTIAL_DIR = "partial"
_STATE_FILE = "state.safetensors"
_STATE_JSON = "state.json"


class KeyConstraintError(GenprovError, RuntimeError):
    """Keys cannot meet (or did not meet) the angle constraint; the message says which and what to change."""


class KeyConstraintWarning(UserWarning):
    """A key is not data-compliant enough, or two keys are off their target angle (see the module docs)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyedGeneratorsConfig(Config):
    """How keys and user models are trained (Kim et al., 2021, Sec. 4-5 and the paper's code).

    Attributes:
        seed: Seed of key initialisation, latents, batch order and post-process draws.
        alpha: Weight of ``MSE(G_i(z), G0(z))`` against the hinge (paper: 10).
        user_steps: Fine-tuning iterations per user model (also the alternating iterations of the first
            key). A run on 16x16 digits needed about 3000; 750 left attributability at 0.24.
        key_steps: Full-batch Adam iterations per further key (stops early once every hinge is 0).
        batch_size: Latents (and authentic images) per iteration.
        lr: Adam learning rate of the user models.
        betas: Adam betas of the user models.
        key_lr: Adam learning rate of the keys.
        key_init_scale: Norm of the random initial key (a standard normal direction).
        key_training: ``"paper"``: the first key is trained alternately with its user model, further keys
            on data compliance and the angle alone (:func:`train_key`), as the paper's code;
            ``"alternating"``: every key is trained alternately with its user model under the angle
            constraint (:func:`train_key_and_user`), which lets each key adapt to directions its user
            model can reach cheaply (our variant; see the experiment's report).
        margin: Hinge margin of keys and plain user models (paper: 1).
        compliance_distance: Extra data-compliance margin of the keys in image-space distance: authentic
            and ``G0`` samples must satisfy ``phi^T x >= margin + compliance_distance * |phi|``, i.e. lie at
            least ``compliance_distance`` (L2, [-1, 1] pixels) inside every key's positive side. The paper's
            margin is in response units only, so a key with a large norm keeps the data a tiny distance
            from its hyperplane, and additive noise of std ``sigma`` then flips its response on other users'
            samples (ambiguous attributions); ``3 * sigma`` guards against that. 0 = the paper.
        target_angle: Angle in degrees every new key should make with every earlier key (paper: 90).
        angle_weight: Weight of the angle penalty ``sum_j |cos(phi_j, phi) - cos(target)|``.
        project: For a 90-degree target, project keys onto the orthogonal complement of earlier keys
            after every step (exact orthogonality); ``False`` uses the penalty alone, as the paper.
        warn_cos: Warn when two keys' cosine is farther than this from ``cos(target_angle)``.
        max_angle_error: Raise :class:`KeyConstraintError` when it is farther than this after training.
        min_compliance: Warn when fewer than this fraction of held-out ``G0`` samples (or authentic images)
            sit on a key's positive side (paper check: 99%).
        n_compliance: ``G0`` samples in the pool keys are trained on, and in the held-out pool they are
            checked on.
        robust: Post-processes of robust training (names in ``POST_PROCESSES``); empty = plain models.
        robust_steps: Robust fine-tuning iterations per user model (starting from its plain model). Paper:
            10 epochs of MNIST's 60,000 images at batch 16 = 37,500 (sh/DCGAN_MNIST/attack.sh:3-4,
            new_generator_training.py:140-146); genprov's earlier budget was 1,000 at batch 64.
        robust_batch_size: Latents per robust iteration (paper: 16; earlier genprov: ``batch_size``, 64).
        robust_lr: Adam learning rate of robust fine-tuning (paper: 5e-4, attack.sh:2).
        robust_betas: Adam betas of robust fine-tuning (paper: (0.5, 0.99), new_generator_training.py:117).
        robust_lr_gamma: Step decay of the robust learning rate: it is multiplied by this after each of
            ``robust_lr_stages`` equal parts of the run (paper: StepLR gamma 0.7 after every epoch,
            new_generator_training.py:118,241; 1 = constant, genprov's earlier setting).
        robust_lr_stages: Parts the run is split into for the decay (paper: its 10 epochs); a shorter run
            keeps the schedule's shape.
        checkpoint_every: Robust fine-tuning saves its state (model, optimiser, step) every this many
            iterations under ``FAMILY/partial/``, so a killed run continues where it stopped.
        robust_prob: Probability that a batch is post-processed during robust training (paper: 0.5).
        robust_margin: Hinge margin during robust training (response units, as ``margin``).
        robust_distance: Extra robust-training margin in image-space distance units: the hinge becomes
            ``E[robust_margin + robust_distance * |phi| + phi^T T(G(z))]+``, i.e. samples must end at least
            ``robust_distance`` (L2, [-1, 1] pixels) beyond the key's hyperplane. Additive noise of std
            ``sigma`` moves a response by ``sigma * |phi|`` (one std), so ``3 * sigma`` makes a sample
            noise-proof at 3 standard deviations whatever the key's norm. 0 = the paper.
        robust_keys: With ``key_training="alternating"``, apply the robust post-processes already while
            keys and user models are trained alternately (to authentic, ``G0`` and user samples in the key
            step), so that the keys themselves survive them (our variant: robust fine-tuning alone cannot
            change a key that a post-process erases, e.g. a high-frequency key under blur). The robust
            stage then continues from those models for ``robust_steps``.
        post_process: Ranges of the random post-process strengths.
        data: Dataset whose training split is the authentic data, when ``create`` gets no images.
        n_real: Use at most this many authentic images (``None``: all).
    """

    seed: int = 0
    alpha: float = 10.0
    user_steps: int = 3000
    key_steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    key_lr: float = 1e-2
    key_init_scale: float = 1.0
    key_training: str = "paper"
    margin: float = 1.0
    compliance_distance: float = 0.0
    target_angle: float = 90.0
    angle_weight: float = 10.0
    project: bool = True
    warn_cos: float = 1e-3
    max_angle_error: float = 0.05
    min_compliance: float = 0.99
    n_compliance: int = 2000
    robust: tuple[str, ...] = ()
    robust_steps: int = 37_500
    robust_batch_size: int = 16
    robust_lr: float = 5e-4
    robust_betas: tuple[float, float] = (0.5, 0.99)
    robust_lr_gamma: float = 0.7
    robust_lr_stages: int = 10
    checkpoint_every: int = 2500
    robust_prob: float = 0.5
    robust_margin: float = 1.0
    robust_distance: float = 0.0
    robust_keys: bool = False
    post_process: PostProcessConfig = dataclasses.field(default_factory=PostProcessConfig)
    data: str = "digits"
    n_real: int | None = None

    def validate(self) -> None:
        require(is_int(self.seed) and self.seed >= 0, "seed", "a non-negative integer", self.seed)
        require(self.alpha >= 0, "alpha", "a non-negative number", self.alpha)
        for name in ("user_steps", "key_steps", "robust_steps"):
            value = getattr(self, name)
            require(is_int(value) and value >= 0, name, "a non-negative integer (iterations)", value)
        for name in ("batch_size", "n_compliance", "robust_batch_size", "robust_lr_stages", "checkpoint_every"):
            value = getattr(self, name)
            require(is_int(value) and value > 0, name, "a positive integer", value)
        require(self.compliance_distance >= 0, "compliance_distance", "a non-negative number", self.compliance_distance)
        for name in ("lr", "key_lr", "key_init_scale", "margin", "robust_margin", "robust_lr"):
            value = getattr(self, name)
            require(isinstance(value, (int, float)) and value > 0, name, "a positive number", value)
        require(
            isinstance(self.betas, tuple) and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            "a pair of numbers in [0, 1), e.g. (0.5, 0.999)",
            self.betas,
        )
        require(
            isinstance(self.robust_betas, tuple)
            and len(self.robust_betas) == 2
            and all(0 <= b < 1 for b in self.robust_betas),
            "robust_betas",
            "a pair of numbers in [0, 1), e.g. (0.5, 0.99)",
            self.robust_betas,
        )
        require(0 < self.robust_lr_gamma <= 1, "robust_lr_gamma", "a factor in (0, 1]", self.robust_lr_gamma)
        require(0 < self.target_angle <= 180, "target_angle", "an angle in degrees in (0, 180]", self.target_angle)
        require(self.angle_weight >= 0, "angle_weight", "a non-negative number", self.angle_weight)
        require(self.warn_cos > 0, "warn_cos", "a positive number", self.warn_cos)
        require(self.max_angle_error > 0, "max_angle_error", "a positive number", self.max_angle_error)
        require(0 <= self.min_compliance <= 1, "min_compliance", "a fraction in [0, 1]", self.min_compliance)
        check_post_process_names(self.robust)
        require(self.key_training in _KEY_TRAINING, "key_training", f"one of {_KEY_TRAINING}", self.key_training)
        if self.robust_keys:
            require(
                self.key_training == "alternating" and bool(self.robust),
                "robust_keys",
                "used with key_training='alternating' and a non-empty robust",
                self.robust_keys,
            )
        require(self.robust_distance >= 0, "robust_distance", "a non-negative number", self.robust_distance)
        require(0 < self.robust_prob <= 1, "robust_prob", "a probability in (0, 1]", self.robust_prob)
        require(
            isinstance(self.post_process, PostProcessConfig), "post_process", "a PostProcessConfig", self.post_process
        )
        if self.n_real is not None:
            require(is_int(self.n_real) and self.n_real >= 2, "n_real", "an integer >= 2 or None", self.n_real)

    @property
    def exact_orthogonality(self) -> bool:
        """Whether further keys are projected onto the orthogonal complement of earlier keys."""
        return self.project and self.target_angle == 90.0


# ------------------------------------------------------------------------------------- responses and rule


def key_responses(keys: Tensor, images: Tensor) -> Tensor:
    """``phi_i^T x`` for every image and key.

    Args:
        keys: (n_keys, C, H, W) or (n_keys, d) keys.
        images: (n, C, H, W) images in [-1, 1] with ``C * H * W == d``.

    Returns:
        (n, n_keys) float responses; negative = on the key's user side.
    """
    flat = keys.reshape(keys.shape[0], -1)
    x = images.reshape(images.shape[0], -1).to(flat.dtype)
    if x.shape[1] != flat.shape[1]:
        raise DataError(
            f"images have {x.shape[1]} values each but the keys {flat.shape[1]}; use the family's image size."
        )
    return x @ flat.T


def attribution_rule(responses: Tensor | np.ndarray) -> np.ndarray:
    """The decentralized attribution rule (Kim et al., 2021, def. 2) on key responses.

    Args:
        responses: (n, n_keys) ``phi_j^T x``.

    Returns:
        (n,) int64: ``i`` when ``responses[:, i] < 0`` and every other response ``> 0``; :data:`NONE` (-1)
        when every response is ``> 0``; :data:`AMBIGUOUS` (-2) otherwise (two or more negative, or a
        response exactly 0).
    """
    r = responses.detach().cpu().numpy() if isinstance(responses, Tensor) else np.asarray(responses)
    if r.ndim != 2:
        raise DataError(f"responses must have shape (n, n_keys); got {r.shape}.")
    negative = r < 0
    non_positive = r <= 0
    out = np.full(r.shape[0], AMBIGUOUS, dtype=np.int64)
    out[~non_positive.any(axis=1)] = NONE
    single = (negative.sum(axis=1) == 1) & (non_positive.sum(axis=1) == 1)
    out[single] = negative[single].argmax(axis=1)
    return out


def key_cosines(keys: Tensor) -> Tensor:
    """(n_keys, n_keys) float64 cosine similarities of the keys."""
    flat = F.normalize(keys.reshape(keys.shape[0], -1).to(torch.float64), dim=1)
    return flat @ flat.T


def key_angles(keys: Tensor) -> np.ndarray:
    """(n_keys, n_keys) angles between keys in degrees (0 on the diagonal)."""
    return np.degrees(np.arccos(np.clip(key_cosines(keys).numpy(), -1.0, 1.0)))


def threshold_angles(keys: Tensor, real: Tensor, *, margin: float = 1.0) -> np.ndarray:
    """The data-dependent angle threshold of every key pair (see the module docs).

    Under the minimal-perturbation model, user ``i`` maps authentic ``x`` to
    ``x' = x - (phi_i^T x + margin) phi_i / |phi_i|^2``; ``phi_j^T x' > 0`` for every authentic ``x`` iff
    ``cos(phi_i, phi_j) < min_x (phi_j^T x / |phi_j|) / ((phi_i^T x + margin) / |phi_i|)``.

    Args:
        keys: (n_keys, C, H, W) keys.
        real: (n, C, H, W) authentic images.
        margin: The user models' hinge margin.

    Returns:
        (n_keys, n_keys) float64 degrees; entry (i, j) is the smallest angle between ``phi_i`` and
        ``phi_j`` that guarantees the pair (NaN on the diagonal). 90 or more means a key is not
        data-compliant on some authentic image.
    """
    flat = keys.reshape(keys.shape[0], -1).to(torch.float64)
    norms = flat.norm(dim=1)
    dist = key_responses(flat, real.to(torch.float64)) / norms  # (n, k) signed distances to the hyperplanes
    out = np.full((flat.shape[0], flat.shape[0]), np.nan)
    for i in range(flat.shape[0]):
        reach = dist[:, i] + margin / norms[i]
        for j in range(flat.shape[0]):
            if i != j:
                ratio = float((dist[:, j] / reach.clamp_min(1e-12)).min())
                out[i, j] = math.degrees(math.acos(min(1.0, max(-1.0, ratio))))
    return out


def check_angle_feasible(n_keys: int, dim: int, target_angle: float) -> None:
    """Raise :class:`KeyConstraintError` when no ``n_keys`` vectors in ``dim`` dimensions meet the target.

    Pairwise angles of at most 90 degrees allow at most ``dim`` such vectors; an obtuse target
    ``theta`` needs ``cos(theta) >= -1 / (n_keys - 1)`` (the regular simplex) and ``n_keys <= dim + 1``.
    """
    cos = math.cos(math.radians(target_angle))
    if target_angle <= 90.0 and n_keys > dim:
        raise KeyConstraintError(
            f"{n_keys} keys cannot be pairwise at {target_angle:g} degrees in a {dim}-dimensional image space "
            f"(at most {dim}); use fewer keys or larger images."
        )
    if target_angle > 90.0 and n_keys > 1 and (cos < -1.0 / (n_keys - 1) - 1e-12 or n_keys > dim + 1):
        best = math.degrees(math.acos(-1.0 / (n_keys - 1)))
        raise KeyConstraintError(
            f"{n_keys} keys cannot be pairwise at {target_angle:g} degrees: the widest equal angle of {n_keys} "
            f"vectors is {best:.1f} degrees (a regular simplex, needing at most {dim + 1} keys). "
            "Lower target_angle (90 is the paper's choice) or use fewer keys."
        )


# ------------------------------------------------------------------------------------------------ results


# ----------------------------------------------------------------------------------------------- training


def _hinge(values: Tensor) -> Tensor:
    return F.relu(values).mean()


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def _adam(params: Sequence[Tensor], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    return torch.optim.Adam(list(params), lr=lr, betas=betas)


def _init_key(dim: int, config: KeyedGeneratorsConfig, index: int) -> Tensor:
    phi = torch.randn(dim, generator=torch_generator(config.seed, "key-init", index), dtype=torch.float32)
    return phi * (config.key_init_scale / phi.norm())


class _AngleConstraint:
    """The angle constraint of a new key to the earlier keys: a projection (exact 90 degrees) or a penalty.

    Args:
        earlier: (j, d) earlier keys (j may be 0).
        config: ``target_angle``, ``angle_weight`` and ``project``.
    """

    def __init__(self, earlier: Tensor, config: KeyedGeneratorsConfig) -> None:
        has_earlier = earlier.shape[0] > 0
        self.exact = config.exact_orthogonality and has_earlier
        self.basis = torch.linalg.qr(earlier.T.to(torch.float64))[0].to(earlier.dtype) if self.exact else None
        self.unit = F.normalize(earlier, dim=1) if has_earlier and not self.exact else None
        self.target = math.cos(math.radians(config.target_angle))
        self.weight = config.angle_weight

    def penalty(self, phi: Tensor) -> Tensor | None:
        """``weight * sum_j |cos(phi_j, phi) - cos(target)|``, or ``None`` when projecting / no earlier keys."""
        if self.unit is None or self.weight == 0:
            return None
        return self.weight * (self.unit @ (phi / phi.norm()) - self.target).abs().sum()

    def project(self, phi: Tensor) -> Tensor:
        """``phi`` without its components along the earlier keys (unchanged unless projecting)."""
        return phi if self.basis is None else phi - self.basis @ (self.basis.T @ phi)


def train_key(
    earlier: Tensor,
    real: Tensor,
    g0: Tensor,
    config: KeyedGeneratorsConfig,
    index: int,
    *,
    show_progress: bool | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Train a further key: data-compliant and at ``target_angle`` to the earlier keys (Sec. 4).

    Minimises ``angle_weight * sum_j |cos(phi_j, phi) - cos(target)| + E[m - phi^T x_real]+ +
    E[m - phi^T G0(z)]+`` with full-batch Adam; for a 90-degree target with ``project`` the key is
    projected onto the orthogonal complement of the earlier keys after every step.

    Args:
        earlier: (j, d) earlier keys (j >= 0).
        real: (n, d) flattened authentic images.
        g0: (m, d) flattened samples of the root model.
        config: Training settings.
        index: Index of the new key (seeds its initialisation).
        show_progress: Progress bar.

    Returns:
        ``(phi, info)``: the (d,) key and ``{"steps", "loss", "seconds"}``.
    """
    start = time.perf_counter()
    angle = _AngleConstraint(earlier, config)
    phi = angle.project(_init_key(real.shape[1], config, index)).requires_grad_(True)
    opt = _adam([phi], config.key_lr, (0.9, 0.999))
    loss_value: float | None = None
    steps = 0
    for step in progress(range(1, config.key_steps + 1), desc=f"key {index}", show=show_progress):
        steps = step
        comply = config.margin + config.compliance_distance * phi.norm()
        loss = _hinge(comply - real @ phi) + _hinge(comply - g0 @ phi)
        penalty = angle.penalty(phi)
        if penalty is not None:
            loss = loss + penalty
        loss_value = float(loss.detach())
        if loss_value == 0.0:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            phi.copy_(angle.project(phi))
    info = {"steps": steps, "loss": loss_value, "seconds": round(time.perf_counter() - start, 3)}
    return phi.detach(), info


class _RobustState:
    """The resumable state of one robust fine-tuning run: ``state.safetensors`` (model and Adam tensors),
    then ``state.json`` (step, optimiser layout, loss sums, and what the run is: settings, start and key),
    each written atomically, the JSON last so that it never points at a half-written tensor file."""

    def __init__(self, folder: Path, config: KeyedGeneratorsConfig, n_steps: int, start: Generator, key: Tensor):
        self.folder = folder
        self.identity = {
            "config": {k: v for k, v in config.to_dict().items() if k in _ROBUST_FIELDS or k in ("seed", "alpha")},
            "n_steps": n_steps,
            "start": module_fingerprint(start),
            "key": _fingerprint_tensor(key.detach().cpu()),
        }
        self.elapsed = 0.0

    def restore(self, user: Generator, opt: torch.optim.Optimizer, sums: dict[str, float]) -> int:
        """Load a saved state into ``user``, ``opt`` and ``sums``; return its step (0 when none is saved)."""
        meta_path = self.folder / _STATE_JSON
        if not meta_path.is_file():
            return 0
        meta = read_json(meta_path)
        if meta.get("run") != self.identity:
            raise StoreMismatchError(
                f"{self.folder} holds the state of another robust fine-tuning run (other settings, start model "
                "or key); delete that folder to start this run afresh."
            )
        tensors = load_tensors(self.folder / _STATE_FILE)
        user.load_state_dict({k[len("user.") :]: v for k, v in tensors.items() if k.startswith("user.")})
        opt.load_state_dict(unflatten_optimizer_state(meta["optimizer"], tensors))
        sums.update(meta["sums"])
        self.elapsed = float(meta["elapsed"])
        logger.info("%s: resuming robust fine-tuning at step %d", self.folder, meta["step"])
        return int(meta["step"])

    def save(
        self, step: int, user: Generator, opt: torch.optim.Optimizer, sums: dict[str, float], seconds: float
    ) -> None:
        """Save the state reached after ``step`` iterations (``seconds`` spent since this process started)."""
        structure, tensors = flatten_optimizer_state("optimizer", opt.state_dict())
        tensors.update(state_tensors({"user": user}))
        save_tensors(self.folder / _STATE_FILE, tensors, metadata={"step": str(step)})
        atomic_write_json(
            self.folder / _STATE_JSON,
            {
                "run": self.identity,
                "step": step,
                "optimizer": structure,
                "sums": sums,
                "elapsed": self.elapsed + seconds,
            },
        )


def fine_tune_user(
    root: Generator,
    key: Tensor,
    config: KeyedGeneratorsConfig,
    index: int,
    *,
    start: Generator | None = None,
    robust: Sequence[str] = (),
    steps: int | None = None,
    real: Tensor | None = None,
    earlier: Tensor | None = None,
    state_dir: str | Path | None = None,
    show_progress: bool | None = None,
) -> tuple[Generator, Tensor, dict[str, Any]]:
    """Fine-tune a user model to fire its key (Sec. 4), optionally robustly (Sec. 5).

    Each iteration draws ``batch_size`` latents from ``(seed, stream, index, step)`` and minimises
    ``E[m + phi^T T(G(z))]+ + alpha * MSE(T(G(z)), T(G0(z)))``, where ``T`` is the identity, or with
    probability ``robust_prob`` a random post-process among ``robust``. With ``real`` given (the first
    key) the key is trained alternately: one key step on ``E[m - phi^T x_real]+ + E[m - phi^T G0(z)]+ +
    E[m + phi^T G(z)]+`` before every generator step.

    The robust stage (``robust`` without ``real``) uses the robust settings: ``robust_batch_size``,
    ``robust_lr`` and ``robust_betas``, the rate multiplied by ``robust_lr_gamma`` after each of
    ``robust_lr_stages`` equal parts of the run (the paper's per-epoch StepLR). With ``state_dir`` it saves
    its state every ``checkpoint_every`` iterations and continues from a saved state; latents and
    post-processes are drawn per iteration from the seed, so a resumed run equals an uninterrupted one.

    Args:
        root: ``G0`` (left unchanged).
        key: (C, H, W) or (d,) key ``phi`` (a starting point when ``real`` is given).
        config: Training settings.
        index: The user's index (seeds its latents and post-processes).
        start: Model to start from (default a copy of ``root``); robust training starts from the plain one.
        robust: Post-processes; empty = plain training.
        steps: Iterations (default ``robust_steps`` when ``robust`` else ``user_steps``).
        real: (n, C, H, W) authentic images: train the key alternately (see :func:`train_key_and_user`).
        earlier: (j, d) earlier keys the alternately trained key must keep its target angle to.
        state_dir: Folder of the resumable state of a robust stage (removed by the caller when done).
        show_progress: Progress bar.

    Returns:
        ``(G_i, phi, info)``: the user model (eval mode, no gradients), the (C, H, W) key and
        ``{"steps", "loss", "hinge", "mse", "seconds"}`` (means over the last 10% of iterations).

    Raises:
        ConfigError: ``state_dir`` given for anything but a robust stage.
        StoreMismatchError: ``state_dir`` holds the state of another run (other settings, start or key).
    """
    robust = check_post_process_names(tuple(robust))
    n_steps = steps if steps is not None else (config.robust_steps if robust else config.user_steps)
    stream = "robust" if robust else "user"
    robust_stage = bool(robust) and real is None
    if state_dir is not None and not robust_stage:
        raise ConfigError("fine_tune_user: state_dir (resumable state) is only for a robust stage (robust, no real).")
    batch_size = config.robust_batch_size if robust_stage else config.batch_size
    root = root.eval()
    user = copy.deepcopy(start if start is not None else root).eval()
    user.requires_grad_(True)
    if robust_stage:
        opt = _adam(list(user.parameters()), config.robust_lr, config.robust_betas)
    else:
        opt = _adam(list(user.parameters()), config.lr, config.betas)
    phi = key.detach().reshape(-1).clone().to(next(root.parameters()).device)
    key_opt = None
    if real is not None:
        angle = _AngleConstraint(earlier if earlier is not None else phi.new_zeros(0, phi.numel()), config)
        with torch.no_grad():
            phi = angle.project(phi)
        phi.requires_grad_(True)
        key_opt = _adam([phi], config.key_lr, (0.9, 0.999))
        real_images = real.to(phi.device)
    tail = max(1, n_steps // 10)
    sums = {"loss": 0.0, "hinge": 0.0, "mse": 0.0}
    started = time.perf_counter()
    resume = _RobustState(Path(state_dir), config, n_steps, user, phi) if state_dir is not None else None
    first = resume.restore(user, opt, sums) if resume is not None else 0
    stage_len = math.ceil(n_steps / config.robust_lr_stages) if n_steps else 1
    for step in progress(range(first, n_steps), desc=f"{stream} model {index}", show=show_progress):
        if robust_stage:
            for group in opt.param_groups:
                group["lr"] = config.robust_lr * config.robust_lr_gamma ** (step // stage_len)
        gen = torch_generator(config.seed, stream, index, step)
        z = torch.randn((batch_size, root.latent_dim), generator=gen).to(phi.device)
        with torch.no_grad():
            x0 = root(z)
        margin = config.robust_margin + config.robust_distance * float(phi.detach().norm()) if robust else config.margin
        transform = None
        if robust and float(torch.rand((), generator=gen)) < config.robust_prob:
            name = robust[int(torch.randint(len(robust), (), generator=gen))]
            transform = draw_post_process(name, config.post_process, tuple(x0.shape), gen)
        if key_opt is not None:
            idx = batch_indices(len(real_images), config.batch_size, config.seed, step).to(phi.device)
            comply = config.margin + config.compliance_distance * phi.norm()
            with torch.no_grad():
                batches = [real_images[idx], x0, user(z)]
                if transform is not None:
                    batches = [transform(b) for b in batches]
            key_loss = (
                _hinge(comply - _flat(batches[0]) @ phi)
                + _hinge(comply - _flat(batches[1]) @ phi)
                + _hinge(margin + _flat(batches[2]) @ phi)
            )
            penalty = angle.penalty(phi)
            if penalty is not None:
                key_loss = key_loss + penalty
            key_opt.zero_grad(set_to_none=True)
            key_loss.backward()
            key_opt.step()
            with torch.no_grad():
                phi.copy_(angle.project(phi))
        x = user(z)
        target = x0
        if transform is not None:
            x, target = transform(x), transform(x0)
        hinge = _hinge(margin + _flat(x) @ phi.detach())
        mse = F.mse_loss(x, target)
        loss = hinge + config.alpha * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= n_steps - tail:
            for name, value in (("loss", loss), ("hinge", hinge), ("mse", mse)):
                sums[name] += float(value.detach())
        if resume is not None and (step + 1) % config.checkpoint_every == 0 and step + 1 < n_steps:
            resume.save(step + 1, user, opt, sums, time.perf_counter() - started)
    user.requires_grad_(False)
    info: dict[str, Any] = {k: v / tail for k, v in sums.items()} if n_steps else dict.fromkeys(sums)
    earlier_seconds = resume.elapsed if resume is not None else 0.0
    info.update(steps=n_steps, seconds=round(earlier_seconds + time.perf_counter() - started, 3))
    out_key = phi.detach().reshape(root.config.channels, root.config.image_size, root.config.image_size)
    return user, out_key, info


def train_key_and_user(
    root: Generator,
    real: Tensor,
    config: KeyedGeneratorsConfig,
    index: int = 0,
    *,
    earlier: Tensor | None = None,
    show_progress: bool | None = None,
) -> tuple[Tensor, Generator, dict[str, Any]]:
    """Train a key and its user model alternately (Sec. 4, ``user_steps`` iterations).

    The paper trains the first key this way. With ``key_training="alternating"`` every key is, and then
    keeps its target angle to the ``earlier`` keys (projection or penalty, as :func:`train_key`).

    Args:
        root: ``G0``.
        real: (n, C, H, W) authentic images.
        config: Training settings.
        index: The key's index (seeds its initialisation and the latents).
        earlier: (j, d) earlier keys.
        show_progress: Progress bar.

    Returns:
        ``(phi, G, info)``: the (C, H, W) key, the user model and its training summary.
    """
    start_key = _init_key(int(np.prod(real.shape[1:])), config, index)
    robust = config.robust if config.robust_keys else ()
    user, key, info = fine_tune_user(
        root,
        start_key,
        config,
        index,
        real=real,
        earlier=earlier,
        robust=robust,
        steps=config.user_steps,
        show_progress=show_progress,
    )
    return key, user, info


# --------------------------------------------------------------------------------------------- the family


def _compliance(key: Tensor, x: Tensor) -> float:
    """Fraction of ``x`` on the key's positive side (``phi^T x > 0``)."""
    return float((key_responses(key[None], x)[:, 0] > 0).float().mean())


def _load_root(root: str | Path | LoadedCheckpoint | Generator) -> tuple[Generator, str | None]:
    source: str | None = None
    if isinstance(root, (str, Path)):
        source = str(Path(root).resolve())
        root = load_checkpoint(root)
    model = root.model if isinstance(root, LoadedCheckpoint) else root
    if not isinstance(model, Generator):
        raise CheckpointError(
            f"The root model must be an image GAN generator (genprov train gan); got a {type(model).__name__}."
        )
    return model.eval(), source


def _real_images(
    real: Tensor | ImageDataset | None, config: KeyedGeneratorsConfig, gan: GANConfig, data_root: str | Path | None
) -> Tensor:
    if real is None:
        real = load_dataset(config.data, split="train", data_root=data_root, resize=gan.image_size)
    images = real.images if isinstance(real, ImageDataset) else real
    check_images(images, "real images", channels=gan.channels, size=gan.image_size)
    if config.n_real is not None and len(images) > config.n_real:
        order = torch.randperm(len(images), generator=torch_generator(config.seed, "real-subset"))
        images = images[order[: config.n_real]]
    if len(images) < 2:
        raise DataError(f"Key training needs at least 2 authentic images; got {len(images)}.")
    return images.to(torch.float32)


def _fingerprint_tensor(x: Tensor) -> str:
    return fingerprint_arrays(x.detach().cpu().contiguous().numpy())


class KeyedGenerators(Pretrained):
    """A family of keyed user models of one root generator, with decentralized attribution.

    Build one with :meth:`create` (or :meth:`make_robust` from a plain family), open one with
    :meth:`from_pretrained`; the constructor only stores what it is given. It satisfies the
    :class:`~genprov.attribution.model.base.AttributesSamples` contract of model attribution:
    :meth:`attribute` returns a :class:`~genprov.results.KeyedAttributionResult` (its decision is the
    decentralized rule, not a threshold, so it is no :class:`ModelAttributor`), and the family is an
    artefact (``save_pretrained`` copies it, members included).

    Args:
        folder: The family folder.
        root: ``G0`` (eval mode).
        keys: (n_keys, C, H, W) keys.
        users: The user models ``G_i`` (eval mode), one per key.
        config: How the family was trained.
        manifest: The family's manifest (the state recorded in its ``config.json``, plus ``"config"``).
    """

    name: ClassVar[str] = "keyed"
    artifact_kind: ClassVar[str] = _KIND

    def __init__(
        self,
        folder: Path,
        root: Generator,
        keys: Tensor,
        users: list[Generator],
        config: KeyedGeneratorsConfig,
        manifest: dict[str, Any],
    ) -> None:
        self.folder = folder
        self.root = root
        self.keys = keys
        self.users = users
        self.config = config
        self.manifest = manifest

    # ----------------------------------------------------------------------------------------- queries

    @property
    def n_keys(self) -> int:
        """Number of keys (and user models)."""
        return int(self.keys.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the family's images."""
        c, h, w = self.keys.shape[1:]
        return int(c), int(h), int(w)

    @property
    def warnings(self) -> list[str]:
        """The key checks' warnings recorded when the family was built."""
        return list(self.manifest.get("warnings", []))

    def user(self, index: int) -> Generator:
        """The user model ``G_index``."""
        if not 0 <= index < self.n_keys:
            raise ConfigError(f"user index must be in [0, {self.n_keys}); got {index}.")
        return self.users[index]

    def sample(self, index: int, n: int, *, seed: int = 0) -> Tensor:
        """``n`` samples of user model ``index`` (``index = -1``: the root ``G0``), as ``genprov.models.sample``.

        Returns:
            (n, C, H, W) images in [-1, 1]; sample ``k`` depends only on ``(seed, k)``, so ``G0`` and every
            ``G_i`` get the same latents for the same seed.
        """
        model = self.root if index == -1 else self.user(index)
        return sample(model, n, seed=seed, show_progress=False)

    def responses(self, images: Tensor) -> Tensor:
        """(n, n_keys) key responses ``phi_j^T x`` of (n, C, H, W) images in [-1, 1] of the family's size."""
        c, h, _ = self.image_shape
        check_images(images, "images", channels=c, size=h)
        return key_responses(self.keys, images.to(self.keys.device, torch.float32))

    def attribute(self, images: Tensor) -> KeyedAttributionResult:
        """Attribute images to user models with the decentralized rule (def. 2).

        Args:
            images: (n, C, H, W) images in [-1, 1] of the family's size (load files with
                ``genprov.data.load_images(paths, size=H)``).

        Returns:
            A :class:`KeyedAttributionResult` with per-image users (or none / ambiguous) and responses.

        Raises:
            DataError: If the images have the wrong shape, channels or range.
        """
        r = self.responses(images)
        return KeyedAttributionResult(
            method="keyed",
            config=self.config.to_dict(),
            users=attribution_rule(r),
            responses=r.detach().cpu().numpy().astype(np.float64),
        )

    def angles(self) -> np.ndarray:
        """(n_keys, n_keys) angles between the keys in degrees."""
        return key_angles(self.keys.cpu())

    def threshold_angles(self, real: Tensor) -> np.ndarray:
        """Data-dependent angle thresholds of every key pair on ``real`` (see :func:`threshold_angles`)."""
        return threshold_angles(self.keys.cpu(), real, margin=self.config.margin)

    # ------------------------------------------------------------------------------------------ build

    @classmethod
    def create(
        cls,
        root: str | Path | LoadedCheckpoint | Generator,
        n_keys: int,
        config: KeyedGeneratorsConfig | None = None,
        *,
        out: str | Path,
        real: Tensor | ImageDataset | None = None,
        data_root: str | Path | None = None,
        base: KeyedGenerators | None = None,
        show_progress: bool | None = None,
    ) -> KeyedGenerators:
        """Train (or finish, or extend) a family of ``n_keys`` keyed user models of ``root`` in ``out``.

        Args:
            root: ``G0``: a GAN checkpoint folder, a loaded checkpoint, or the generator itself.
            n_keys: Number of keys / user models (>= 1).
            config: Training settings (default :class:`KeyedGeneratorsConfig`).
            out: The family folder (created; a half-built one continues where it stopped).
            real: Authentic images (n, C, H, W) in [-1, 1] or a dataset; default: the training split of
                ``config.data`` resized to the root's size.
            data_root: Folder of dataset files when ``config.data`` is not built in.
            base: A family of the same root, data and config apart from robust training, whose keys and
                plain models are copied instead of trained (what :meth:`make_robust` passes).
            show_progress: Progress bars.

        Returns:
            The finished family (as :meth:`load` returns it).

        Raises:
            KeyConstraintError: If the keys cannot meet the angle constraint.
            StoreMismatchError: If ``out`` holds a family of another root, data or config.
            ConfigError: If ``out`` is a file or holds another kind of artefact (nothing is written).
        """
        config = config if config is not None else KeyedGeneratorsConfig()
        require(is_int(n_keys) and n_keys >= 1, "n_keys", "a positive integer", n_keys)
        check_output_folder(out, accept={"keyed family"})
        if not isinstance(config, KeyedGeneratorsConfig):
            raise ConfigError(f"config must be a KeyedGeneratorsConfig; got {type(config).__name__}.")
        g0, source = _load_root(root)
        gan = g0.config
        dim = gan.channels * gan.image_size**2
        check_angle_feasible(n_keys, dim, config.target_angle)
        images = _real_images(real, config, gan, data_root)
        if base is not None:
            _check_base(base, g0, config, n_keys)
        builder = _Builder(Path(out), g0, source, images, config, n_keys, base, show_progress)
        builder.run()
        return cls.from_pretrained(out)

    def make_robust(
        self,
        robust: Sequence[str],
        *,
        out: str | Path,
        real: Tensor | ImageDataset | None = None,
        data_root: str | Path | None = None,
        show_progress: bool | None = None,
        **changes: Any,
    ) -> KeyedGenerators:
        """A robust family from this one: same keys, each user model fine-tuned robustly from its plain one.

        Args:
            robust: Post-processes to be robust to (``blur``, ``crop``, ``noise``, ``jpeg``, ``combination``).
            out: Folder of the new family (resumable like :meth:`create`).
            real: The authentic images this family was built with (default: ``config.data``).
            data_root: Folder of dataset files.
            show_progress: Progress bars.
            **changes: Other robust-training settings (``robust_steps``, ``robust_prob``, ``robust_margin``,
                ``post_process``).
        """
        unknown = set(changes) - _ROBUST_FIELDS
        if unknown:
            raise ConfigError(f"make_robust only changes {sorted(_ROBUST_FIELDS)}; got {sorted(unknown)}.")
        config = self.config.replace(robust=tuple(robust), **changes)
        return KeyedGenerators.create(
            self.root,
            self.n_keys,
            config,
            out=out,
            real=real,
            data_root=data_root,
            base=self,
            show_progress=show_progress,
        )

    # ------------------------------------------------------------------------------------- save / open

    def _payload(self) -> ArtifactPayload:
        return ArtifactPayload(config=self.config, state={k: v for k, v in self.manifest.items() if k != "config"})

    def save_pretrained(self, folder: str | Path) -> Path:
        """Copy the family (root, keys, user and plain models, manifest) into ``folder``; returns it.

        Raises:
            ConfigError: ``folder`` is a file or holds another artefact than a keyed family (nothing is written).
        """
        out = Path(folder)
        check_output_folder(out, accept={"keyed family"})
        if out.resolve() != self.folder.resolve():
            save_checkpoint(out / ROOT_DIR, "gan", {"generator": self.root}, self.root.config)
            for member, key, user in zip(self.manifest["members"], self.keys, self.users, strict=True):
                save_tensors(out / member["key"], {"key": key.detach().cpu()})
                save_checkpoint(out / member["user"], "gan", {"generator": user}, self.root.config)
                if member["plain"] != member["user"] and is_checkpoint(self.folder / member["plain"]):
                    _copy_checkpoint(self.folder / member["plain"], out / member["plain"])
        return super().save_pretrained(out)

    @classmethod
    def from_pretrained(cls, folder: str | Path, wrapped: Any = None, *, device: str | torch.device = "cpu") -> Self:
        """Open a finished family folder (also one written before the artefact format, with ``manifest.json``).

        Args:
            folder: The family folder.
            wrapped: Unused (a family holds its root model).
            device: Where to load the models and keys.

        Raises:
            CheckpointError: If the folder, its manifest or a member's file is missing or unreadable, or the
                family is not finished (run :meth:`create` on it again to finish it).
        """
        record = _read_record(Path(folder))
        if record is None:
            raise CheckpointError(
                f"{folder} is not a keyed family: {Path(folder) / CONFIG_FILE} is missing. Build one with "
                "'genprov keyed create' or KeyedGenerators.create."
            )
        return cls._open(record, device)

    @classmethod
    def _from_record(cls, record: ArtifactRecord, tensors: dict[str, Tensor], wrapped: Any) -> Self:
        return cls._open(record, "cpu")

    @classmethod
    def _open(cls, record: ArtifactRecord, device: str | torch.device) -> Self:
        folder = record.folder
        manifest = {**record.state, "config": record.config}
        config = KeyedGeneratorsConfig.from_dict(manifest["config"])
        unfinished = [m["index"] for m in manifest["members"] if not m.get("done")]
        if unfinished or not manifest.get("complete"):
            raise CheckpointError(
                f"The family in {folder} is not finished (members {unfinished or 'all'} pending). Run "
                "KeyedGenerators.create (or 'genprov keyed create') with the same arguments to finish it."
            )
        root_dir = folder / ROOT_DIR
        if not is_checkpoint(root_dir):
            raise CheckpointError(f"The family in {folder} is incomplete: its root model {root_dir} is missing.")
        root, _ = _load_root(load_checkpoint(root_dir, device=device))
        if module_fingerprint(root) != manifest["root"]["fingerprint"]:
            raise CheckpointError(
                f"{root_dir} does not match the root model the family was trained from (fingerprint differs); "
                "was it replaced? Rebuild the family."
            )
        keys, users = [], []
        for member in manifest["members"]:
            key_path = folder / member["key"]
            if not key_path.is_file():
                raise CheckpointError(f"The family in {folder} is missing key {member['index']}: {key_path}.")
            keys.append(load_tensors(key_path, device=device)["key"])
            user_dir = folder / member["user"]
            if not is_checkpoint(user_dir):
                raise CheckpointError(
                    f"The family in {folder} is missing user model {member['index']}: {user_dir} is not a checkpoint."
                )
            user, _ = _load_root(load_checkpoint(user_dir, device=device))
            users.append(user)
        stacked = torch.stack(keys)
        if tuple(stacked.shape[1:]) != (root.config.channels, root.config.image_size, root.config.image_size):
            raise CheckpointError(
                f"The keys in {folder} have shape {tuple(stacked.shape[1:])}, unlike the root's images."
            )
        return cls(folder, root, stacked, users, config, manifest)


# ------------------------------------------------------------------------------------------- the builder


def _check_base(base: KeyedGenerators, root: Generator, config: KeyedGeneratorsConfig, n_keys: int) -> None:
    """Raise :class:`StoreMismatchError` unless ``base`` can seed a family of ``root`` with ``config``."""
    if module_fingerprint(base.root) != module_fingerprint(root):
        raise StoreMismatchError(f"The base family {base.folder} was built from another root model.")
    if base.n_keys < n_keys:
        raise StoreMismatchError(f"The base family {base.folder} has {base.n_keys} keys; {n_keys} were asked for.")
    diffs = {k: v for k, v in base.config.diff(config).items() if k not in _ROBUST_FIELDS}
    if diffs:
        raise StoreMismatchError(
            f"The base family {base.folder} was trained with other settings ({', '.join(sorted(diffs))}); a family "
            f"built from it may differ only in robust training ({', '.join(sorted(_ROBUST_FIELDS))})."
        )


def _legacy_manifest(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """A family of the layout before the artefact format (``manifest.json``, version 1) as a ``config.json``."""
    path = folder / LEGACY_MANIFEST
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except ValueError as err:  # unreadable (OSError) is no corruption: reported as such
        raise CheckpointError(f"Cannot read {path}: {err}. The family manifest is corrupted.") from err
    if not isinstance(data, dict) or data.get("format") != _LEGACY_FORMAT:
        raise CheckpointError(f"{path} is not a keyed-family manifest (format {_LEGACY_FORMAT!r}).")
    if data.get("version", 1) != 1:
        raise CheckpointError(
            f"{path} has keyed-family manifest version {data['version']!r}; this genprov reads version 1 and the "
            "artefact format. Open it with the genprov that wrote it, or rebuild the family."
        )
    state = {k: v for k, v in data.items() if k not in ("format", "version", "config")}
    return {"kind": _KIND, "method": KeyedGenerators.name, "config": data.get("config"), "state": state}, {}


KeyedGenerators.legacy_layout = _legacy_manifest


def _read_record(folder: Path) -> ArtifactRecord | None:
    """The family's artefact record (``None``: no family there, neither ``config.json`` nor ``manifest.json``)."""
    if not (folder / CONFIG_FILE).is_file() and not (folder / LEGACY_MANIFEST).is_file():
        return None
    return read_artifact(folder, _KIND, legacy_layout=_legacy_manifest)[0]


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of the family in ``folder`` (its recorded state plus ``"config"``), or ``None``."""
    record = _read_record(folder)
    return None if record is None else {**record.state, "config": record.config}


class _Builder:
    """Trains the members of a family in order, recording each finished stage in the manifest."""

    def __init__(
        self,
        out: Path,
        root: Generator,
        source: str | None,
        real: Tensor,
        config: KeyedGeneratorsConfig,
        n_keys: int,
        base: KeyedGenerators | None,
        show_progress: bool | None,
    ) -> None:
        self.out = out
        self.root = root
        self.real = real
        self.config = config
        self.n_keys = n_keys
        self.base = base
        self.show_progress = show_progress
        self.gan: GANConfig = root.config
        self.root_fp = module_fingerprint(root)
        self.data_fp = _fingerprint_tensor(real)
        self.source = source
        self._g0_pool: Tensor | None = None
        self._g0_check: Tensor | None = None

    # -------------------------------------------------------------------------------------- manifest

    def _fresh_manifest(self) -> dict[str, Any]:
        return {
            "complete": False,
            "n_keys": self.n_keys,
            "config": self.config.to_dict(),
            "root": {"fingerprint": self.root_fp, "source": self.source, "model": self.gan.to_dict()},
            "data": {"fingerprint": self.data_fp, "n": len(self.real)},
            "members": [],
            "warnings": [],
        }

    def _open(self) -> dict[str, Any]:
        manifest = _read_manifest(self.out)
        if manifest is None:
            return self._fresh_manifest()
        problems: dict[str, tuple[Any, Any]] = {}
        if manifest["root"]["fingerprint"] != self.root_fp:
            raise StoreMismatchError(
                f"{self.out} holds a family of a different root model (fingerprint {manifest['root']['fingerprint']}, "
                f"now {self.root_fp}). Use another --out folder, or the root the family was built from "
                f"({manifest['root'].get('source')})."
            )
        if manifest["data"]["fingerprint"] != self.data_fp:
            problems["data"] = (manifest["data"]["fingerprint"], self.data_fp)
        saved = KeyedGeneratorsConfig.from_dict(manifest["config"])
        problems.update(saved.diff(self.config))
        if manifest["n_keys"] > self.n_keys:
            problems["n_keys"] = (manifest["n_keys"], self.n_keys)
        if problems:
            shown = "; ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in list(problems.items())[:6])
            raise StoreMismatchError(
                f"{self.out} holds a family built differently ({shown}). Use another --out folder, or the "
                "settings it was built with (a family may only grow: more keys are fine)."
            )
        manifest["n_keys"] = self.n_keys
        manifest["complete"] = False
        return manifest

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        write_artifact(
            self.out,
            kind=_KIND,
            method=KeyedGenerators.name,
            class_name=KeyedGenerators.__name__,
            payload=ArtifactPayload(config=self.config, state={k: v for k, v in manifest.items() if k != "config"}),
        )

    def _member(self, manifest: dict[str, Any], index: int) -> dict[str, Any]:
        members: list[dict[str, Any]] = manifest["members"]
        while len(members) <= index:
            i = len(members)
            members.append(
                {
                    "index": i,
                    "key": f"{KEYS_DIR}/key-{i:03d}.safetensors",
                    "plain": f"{PLAIN_DIR if self.config.robust else USERS_DIR}/user-{i:03d}",
                    "user": f"{USERS_DIR}/user-{i:03d}",
                    "stages": [],
                    "done": False,
                    "info": {},
                }
            )
        return members[index]

    # -------------------------------------------------------------------------------------- pools

    def _pool(self, name: str) -> Tensor:
        cached = self._g0_pool if name == "pool" else self._g0_check
        if cached is None:
            cached = _flat(sample(self.root, self.config.n_compliance, seed=derive_seed(self.config.seed, "g0", name)))
            if name == "pool":
                self._g0_pool = cached
            else:
                self._g0_check = cached
        return cached

    # -------------------------------------------------------------------------------------- stages

    def run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        manifest = self._open()
        if not is_checkpoint(self.out / ROOT_DIR):
            save_checkpoint(self.out / ROOT_DIR, "gan", {"generator": self.root}, self.gan)
        for i in range(self.n_keys):
            self._member(manifest, i)
        self._save_manifest(manifest)
        keys: list[Tensor] = []
        for i in range(self.n_keys):
            keys.append(self._key_stage(manifest, i, keys))
        self._check_keys(manifest, keys)
        for i in range(self.n_keys):
            self._plain_stage(manifest, i, keys[i])
        for i in range(self.n_keys):
            if self.config.robust:
                self._robust_stage(manifest, i, keys[i])
            member = self._member(manifest, i)
            member["done"] = True
        manifest["complete"] = True
        self._save_manifest(manifest)

    def _key_stage(self, manifest: dict[str, Any], i: int, keys: list[Tensor]) -> Tensor:
        member = self._member(manifest, i)
        key_path = self.out / member["key"]
        if "key" in member["stages"]:
            return load_tensors(key_path)["key"]
        shape = (self.gan.channels, self.gan.image_size, self.gan.image_size)
        if self.base is not None:
            key = self.base.keys[i].detach().cpu()
            member["info"]["key"] = {"copied_from": str(self.base.folder)}
        elif i == 0 or self.config.key_training == "alternating":
            earlier = _flat(torch.stack(keys)) if keys else None
            key, user, info = train_key_and_user(
                self.root, self.real, self.config, i, earlier=earlier, show_progress=self.show_progress
            )
            save_checkpoint(self.out / member["plain"], "gan", {"generator": user}, self.gan, extra={"key": i})
            _mark(member, "plain")
            member["info"]["plain"] = info
            member["info"]["key"] = {"trained": f"alternately with user model {i}"}
        else:
            flat, info = train_key(
                _flat(torch.stack(keys)),
                _flat(self.real),
                self._pool("pool"),
                self.config,
                i,
                show_progress=self.show_progress,
            )
            key = flat.reshape(shape)
            member["info"]["key"] = info
        save_tensors(key_path, {"key": key})
        _mark(member, "key")
        logger.info("%s: key %d done", self.out, i)
        member["info"]["key"].update(self._key_checks(manifest, i, key, keys))
        self._save_manifest(manifest)
        return key

    def _key_checks(self, manifest: dict[str, Any], i: int, key: Tensor, earlier: list[Tensor]) -> dict[str, Any]:
        cfg = self.config
        checks = {
            "compliance_real": _compliance(key, self.real),
            "compliance_g0": _compliance(key, self._pool("check")),
            "norm": float(key.norm()),
        }
        for what in ("g0", "real"):
            frac = checks[f"compliance_{what}"]
            if frac < cfg.min_compliance:
                source = "held-out G0 samples" if what == "g0" else "authentic images"
                self._warn(
                    manifest,
                    f"key {i}: only {frac:.1%} of {source} are on its positive side (want >= "
                    f"{cfg.min_compliance:.0%}); the key is not data-compliant. Train it longer (key_steps) or "
                    "use fewer keys.",
                )
        if earlier:
            cos = key_cosines(torch.stack([*earlier, key]))[-1, :-1]
            error = (cos - math.cos(math.radians(cfg.target_angle))).abs()
            worst = int(error.argmax())
            checks["max_cos_error"] = float(error.max())
            if float(error[worst]) > cfg.max_angle_error:
                raise KeyConstraintError(
                    f"key {i} could not meet the angle constraint: its cosine with key {worst} is "
                    f"{float(cos[worst]):.4f}, target cos({cfg.target_angle:g} deg) = "
                    f"{math.cos(math.radians(cfg.target_angle)):.4f} (error {float(error[worst]):.3g} > max_angle_error "
                    f"{cfg.max_angle_error:g}). Data compliance and this angle conflict; use target_angle 90 "
                    "(the paper's), fewer keys, or a larger angle_weight."
                )
            if float(error[worst]) > cfg.warn_cos:
                self._warn(
                    manifest,
                    f"keys {worst} and {i}: cosine {float(cos[worst]):.2e}, {float(error[worst]):.2e} from the "
                    f"target's (warn_cos {cfg.warn_cos:g}).",
                )
        return checks

    def _check_keys(self, manifest: dict[str, Any], keys: list[Tensor]) -> None:
        stacked = torch.stack(keys)
        manifest["angles"] = key_angles(stacked).round(4).tolist()
        thresholds = threshold_angles(stacked, self.real, margin=self.config.margin)
        manifest["threshold_angles"] = [[None if math.isnan(v) else round(v, 4) for v in row] for row in thresholds]
        self._save_manifest(manifest)

    def _plain_stage(self, manifest: dict[str, Any], i: int, key: Tensor) -> None:
        member = self._member(manifest, i)
        if "plain" in member["stages"]:
            return
        target = self.out / member["plain"]
        if self.base is not None:
            base_member = self.base.manifest["members"][i]
            source = self.base.folder / base_member["plain"]
            _copy_checkpoint(source, target)
            member["info"]["plain"] = {"copied_from": str(source)}
        else:
            user, _, info = fine_tune_user(self.root, key, self.config, i, show_progress=self.show_progress)
            save_checkpoint(target, "gan", {"generator": user}, self.gan, extra={"key": i})
            member["info"]["plain"] = info
        _mark(member, "plain")
        logger.info("%s: user model %d done", self.out, i)
        self._save_manifest(manifest)

    def _robust_stage(self, manifest: dict[str, Any], i: int, key: Tensor) -> None:
        member = self._member(manifest, i)
        if "robust" in member["stages"]:
            return
        plain, _ = _load_root(load_checkpoint(self.out / member["plain"]))
        state_dir = self.out / PARTIAL_DIR / f"user-{i:03d}"
        user, _, info = fine_tune_user(
            self.root,
            key,
            self.config,
            i,
            start=plain,
            robust=self.config.robust,
            state_dir=state_dir,
            show_progress=self.show_progress,
        )
        save_checkpoint(self.out / member["user"], "gan", {"generator": user}, self.gan, extra={"key": i})
        member["info"]["robust"] = info
        _mark(member, "robust")
        logger.info("%s: robust user model %d done", self.out, i)
        self._save_manifest(manifest)
        shutil.rmtree(state_dir, ignore_errors=True)

    def _warn(self, manifest: dict[str, Any], message: str) -> None:
        warnings.warn(message, KeyConstraintWarning, stacklevel=4)
        if message not in manifest["warnings"]:
            manifest["warnings"].append(message)


def _mark(member: dict[str, Any], stage: str) -> None:
    if stage not in member["stages"]:
        member["stages"].append(stage)


def _copy_checkpoint(source: Path, target: Path) -> None:
    """Copy a checkpoint folder's two files, each atomically (weights first, as ``save_checkpoint``)."""
    if not is_checkpoint(source):
        raise CheckpointError(f"Cannot copy user model {source}: it is not a checkpoint.")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        atomic_write_bytes(target / name, (source / name).read_bytes())
