"""Per-image reconstruction quality and explanation utility.

Used to measure how well an inversion attack rebuilds private inputs from explanations (ExpMI, PredMI) and
how much a defense (GNIME) degrades that, at what cost to the explanations (GNIME, Jeong et al., NeurIPS
2022, Sec. 5):

- image quality: :func:`mse`, :func:`psnr`, :func:`ssim`;
- semantic leakage: :func:`classification_hits` with the victim classifier (re-classification accuracy,
  :func:`reclassification_accuracy`) or with an independent evaluation classifier (TCA, "target
  classification accuracy", :func:`target_classification_accuracy`: identity leakage), and
  :func:`feature_similarity` (DeePSiM-style cosine of a classifier's penultimate features);
- explanation utility: :func:`explanation_distortion` (MSE of defended vs original maps) and
  :func:`top_pixel_overlap` (share of the original's top-q% pixels that stay in the defended map's top q%);
- :func:`reconstruction_summary`: one attack's row of GNIME's table (means with bootstrap intervals).

Per-image metrics compute in float64 and return a float64 tensor of shape (n,); :func:`summarize` turns
that into a mean with a bootstrap confidence interval. The accuracies are that mean of the per-image hits.

genprov images live in [-1, 1], so the default ``data_range`` (max - min of the value range) is 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genprov.eval.stats import MeanCI, summarize
from genprov.exceptions import DataError
from genprov.utils.arrays import to_tensor
from genprov.utils.validation import check_images

__all__ = [
    "classification_hits",
    "explanation_distortion",
    "feature_similarity",
    "mse",
    "psnr",
    "reclassification_accuracy",
    "reconstruction_summary",
    "ssim",
    "summarize",
    "target_classification_accuracy",
    "top_pixel_overlap",
]


def _pair(
    x: object,
    y: object,
    names: tuple[str, str] = ("x", "y"),
    *,
    what: str = "(n, C, H, W)",
    fix: str = "Pair each reconstruction with its original.",
    items: str = "image pair",
) -> tuple[Tensor, Tensor]:
    """Check two image batches of the same shape (named ``names`` in errors; ``fix`` says how to pair them
    and ``items`` what one pair is) and return them as float64 tensors."""
    a, b = names
    tx = check_images(to_tensor(x, a), a, value_range=None)
    ty = check_images(to_tensor(y, b), b, value_range=None)
    if tx.shape != ty.shape:
        raise DataError(
            f"{a} and {b} must have the same shape {what}; got {tuple(tx.shape)} and {tuple(ty.shape)}. {fix}"
        )
    if tx.shape[0] == 0:
        raise DataError(f"{a} and {b} are empty; pass at least one {items}.")
    return tx.detach().to("cpu", torch.float64), ty.detach().to("cpu", torch.float64)


def _check_data_range(data_range: float) -> float:
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise DataError(f"data_range must be a positive number (2 for images in [-1, 1]); got {data_range!r}.")
    return float(data_range)


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image.

    Args:
        x: (n, C, H, W) reconstructions.
        y: (n, C, H, W) originals.

    Returns:
        (n,) float64; lower = better reconstruction.
    """
    tx, ty = _pair(x, y)
    return (tx - ty).pow(2).mean(dim=(1, 2, 3))


def psnr(x: Tensor, y: Tensor, *, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per image, ``10 log10(data_range^2 / MSE)`` in dB.

    Args:
        x: (n, C, H, W) reconstructions.
        y: (n, C, H, W) originals.
        data_range: Width of the value range: 2 for [-1, 1] images, 1 for [0, 1], 255 for uint8.

    Returns:
        (n,) float64; higher = better reconstruction; ``+inf`` where an image is reproduced exactly.
    """
    peak = _check_data_range(data_range)
    err = mse(x, y)
    return 10.0 * torch.log10(peak**2 / err)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    """(size, size) float64 Gaussian window that sums to 1."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def _window_size(window_size: int | None, height: int, width: int) -> int:
    fits = min(height, width)
    if window_size is None:
        largest_odd = fits if fits % 2 == 1 else fits - 1
        if largest_odd < 1:
            raise DataError(f"Images of {height}x{width} pixels are too small for SSIM.")
        return min(11, largest_odd)
    if not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
        raise DataError(f"window_size must be a positive odd integer (e.g. 11); got {window_size!r}.")
    if window_size > fits:
        raise DataError(
            f"window_size={window_size} does not fit {height}x{width} images; pass window_size <= {fits} "
            "or window_size=None to use the largest odd window up to 11."
        )
    return window_size


def ssim(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 2.0,
    window_size: int | None = None,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity per image (Wang et al., 2004, "Image quality assessment: from error visibility
    to structural similarity", eq. 13 with a Gaussian window).

    Local means, variances and the covariance are Gaussian-weighted over each window position that fits
    entirely inside the image ("valid" filtering, as in the paper and ``skimage`` after its border crop);
    the SSIM map is averaged over positions and then over channels.

    Args:
        x: (n, C, H, W) reconstructions.
        y: (n, C, H, W) originals.
        data_range: Width of the value range (2 for [-1, 1] images).
        window_size: Odd side of the Gaussian window. ``None`` (default) uses 11, or the largest odd size
            that fits for smaller images (7 for 8x8 digits).
        sigma: Standard deviation of the Gaussian window, in pixels.
        k1: Stabiliser of the luminance term, ``C1 = (k1 * data_range)^2``.
        k2: Stabiliser of the contrast-structure term, ``C2 = (k2 * data_range)^2``.

    Returns:
        (n,) float64 in [-1, 1]; 1 for identical images, higher = better reconstruction.
    """
    tx, ty = _pair(x, y)
    peak = _check_data_range(data_range)
    if not sigma > 0:
        raise DataError(f"sigma must be positive (1.5 in the SSIM paper); got {sigma!r}.")
    _, channels, height, width = tx.shape
    size = _window_size(window_size, height, width)
    window = _gaussian_window(size, sigma).expand(channels, 1, size, size)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, window, groups=channels)

    mu_x, mu_y = blur(tx), blur(ty)
    var_x = blur(tx * tx) - mu_x**2
    var_y = blur(ty * ty) - mu_y**2
    cov = blur(tx * ty) - mu_x * mu_y
    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


# ------------------------------------------------------------------------------------ semantic leakage


def _check_labels(labels: object, n: int) -> Tensor:
    t = to_tensor(labels, "labels")
    if t.ndim != 1 or len(t) != n:
        raise DataError(f"labels must have shape (n,) = ({n},), one class per image; got {tuple(t.shape)}.")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise DataError(f"labels must be integer class indices; got dtype {t.dtype}.")
    return t.to("cpu", torch.int64)


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def classification_hits(classifier: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 256) -> Tensor:
    """Whether ``classifier`` assigns each image its label.

    Args:
        classifier: ``(n, C, H, W) -> (n, n_classes)`` logits (put it in eval mode).
        images: (n, C, H, W) images, e.g. reconstructions.
        labels: (n,) the true classes (identities) of the originals.
        batch_size: Images per forward pass (does not change the result).

    Returns:
        (n,) float64 of 1.0 (hit) and 0.0; the mean is the accuracy, higher = more leakage when the
        images are reconstructions.
    """
    x = check_images(to_tensor(images, "images"), "images", value_range=None)
    y = _check_labels(labels, len(x))
    if len(x) == 0:
        raise DataError("images is empty; pass at least one image.")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise DataError(f"batch_size must be a positive integer; got {batch_size!r}.")
    dev = _device_of(classifier)
    preds = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = classifier(x[i : i + batch_size].to(dev, torch.float32))
            if not isinstance(logits, Tensor) or logits.ndim != 2:
                raise DataError(f"classifier must return (n, n_classes) logits; got {type(logits).__name__}.")
            preds.append(logits.argmax(dim=1).to("cpu"))
    return (torch.cat(preds) == y).to(torch.float64)


def reclassification_accuracy(
    victim: nn.Module, reconstructions: Tensor, labels: Tensor, *, batch_size: int = 256
) -> float:
    """Share of reconstructions the victim classifier assigns the original's class (higher = more leakage).

    Args:
        victim: The classifier whose explanations were attacked.
        reconstructions: (n, C, H, W) reconstructed images.
        labels: (n,) classes of the originals.
        batch_size: Images per forward pass.
    """
    return float(classification_hits(victim, reconstructions, labels, batch_size=batch_size).mean())


def target_classification_accuracy(
    evaluator: nn.Module, reconstructions: Tensor, labels: Tensor, *, batch_size: int = 256
) -> float:
    """TCA: share of reconstructions an independent evaluation classifier assigns the original's class.

    With identities as classes this measures identity leakage (GNIME Sec. 5; higher = more leakage).
    The evaluation classifier should be trained on the defender's data, separately from the victim.

    Args:
        evaluator: The evaluation classifier.
        reconstructions: (n, C, H, W) reconstructed images.
        labels: (n,) classes (identities) of the originals.
        batch_size: Images per forward pass.
    """
    return float(classification_hits(evaluator, reconstructions, labels, batch_size=batch_size).mean())


def _feature_fn(model: nn.Module | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    feats = getattr(model, "features", None)
    if callable(feats):
        return feats
    if isinstance(model, nn.Module):
        raise DataError(
            f"feature_similarity needs penultimate features; {type(model).__name__} has no features() method. "
            "Pass a callable returning (n, d) features instead (e.g. lambda x: net[:-1](x))."
        )
    if callable(model):
        return model
    raise DataError(f"features must be a classifier with features() or a callable; got {type(model).__name__}.")


def feature_similarity(
    features: nn.Module | Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, batch_size: int = 256
) -> Tensor:
    """Per-image cosine similarity of penultimate features (DeePSiM-style perceptual similarity).

    Dosovitskiy & Brox (2016) compare images in the feature space of a trained network; here the features
    are a classifier's penultimate vectors (e.g. :meth:`genprov.models.classifiers.CNNClassifier.features`
    of the evaluation classifier).

    Args:
        features: A classifier with a ``features(x) -> (n, d)`` method, or such a callable.
        x: (n, C, H, W) reconstructions.
        y: (n, C, H, W) originals.
        batch_size: Images per forward pass.

    Returns:
        (n,) float64 in [-1, 1]; higher = more similar. A zero feature vector has similarity 0.
    """
    tx, ty = _pair(x, y)
    fn = _feature_fn(features)
    dev = _device_of(features) if isinstance(features, nn.Module) else torch.device("cpu")
    out = []
    with torch.no_grad():
        for i in range(0, len(tx), batch_size):
            fx = fn(tx[i : i + batch_size].to(dev, torch.float32)).flatten(1).to("cpu", torch.float64)
            fy = fn(ty[i : i + batch_size].to(dev, torch.float32)).flatten(1).to("cpu", torch.float64)
            norms = fx.norm(dim=1) * fy.norm(dim=1)
            dots = (fx * fy).sum(dim=1)
            out.append(torch.where(norms > 0, dots / torch.where(norms > 0, norms, torch.ones_like(norms)), 0.0))
    return torch.cat(out)


# --------------------------------------------------------------------------------- explanation utility


def _maps(defended: object, original: object) -> tuple[Tensor, Tensor]:
    return _pair(
        defended,
        original,
        ("defended", "original"),
        what="(n, 1, H, W)",
        fix="Pair each defended map with the clean map of the same input.",
        items="pair of maps",
    )


def explanation_distortion(defended: Tensor, original: Tensor) -> Tensor:
    """Per-map mean squared difference between defended and original explanations (utility cost).

    Args:
        defended: (n, 1, H, W) defended maps.
        original: (n, 1, H, W) clean maps (both post-processed, i.e. in [0, 1]).

    Returns:
        (n,) float64; lower = more faithful explanations. Its mean is the defense's distortion.
    """
    d, o = _maps(defended, original)
    return (d - o).pow(2).mean(dim=(1, 2, 3))


def top_pixel_overlap(defended: Tensor, original: Tensor, *, q: float = 0.1) -> Tensor:
    """Share of the original map's top-``q`` pixels that are also among the defended map's top ``q``.

    The top set of a map holds its ``k = max(1, round(q * C * H * W))`` largest values; ties are broken
    by pixel order (row-major, first pixel first), so the result is deterministic.

    Args:
        defended: (n, C, H, W) defended maps.
        original: (n, C, H, W) clean maps.
        q: Fraction of pixels in the top set, in (0, 1] (0.1 = top 10%).

    Returns:
        (n,) float64 in [0, 1]; higher = the defense keeps the most important pixels (1 = same top set).
    """
    if not (isinstance(q, (int, float)) and math.isfinite(q) and 0 < q <= 1):
        raise DataError(f"q must be a fraction in (0, 1], e.g. 0.1 for the top 10% of pixels; got {q!r}.")
    d, o = _maps(defended, original)
    flat_d, flat_o = d.flatten(1), o.flatten(1)
    k = max(1, round(q * flat_d.shape[1]))
    top_d = torch.sort(flat_d, dim=1, descending=True, stable=True).indices[:, :k]
    top_o = torch.sort(flat_o, dim=1, descending=True, stable=True).indices[:, :k]
    in_d = torch.zeros_like(flat_d, dtype=torch.bool).scatter_(1, top_d, True)
    return in_d.gather(1, top_o).to(torch.float64).sum(dim=1) / k


# ------------------------------------------------------------------------------------------- summary


def reconstruction_summary(
    reconstructions: Tensor,
    originals: Tensor,
    *,
    labels: Tensor | None = None,
    victim: nn.Module | None = None,
    evaluator: nn.Module | None = None,
    unit_range: bool = True,
    seed: int = 0,
    n_boot: int = 2000,
    batch_size: int = 256,
) -> dict[str, MeanCI]:
    """Every reconstruction metric of one attack, as means with percentile-bootstrap intervals.

    Args:
        reconstructions: (n, C, H, W) reconstructions in [-1, 1].
        originals: (n, C, H, W) the private inputs.
        labels: (n,) classes (identities) of the originals; needed for the accuracies.
        victim: The attacked classifier: adds ``"reclassification_accuracy"``.
        evaluator: An independent evaluation classifier: adds ``"tca"``, and ``"feature_similarity"``
            when it has a ``features`` method (e.g. ``CNNClassifier``).
        unit_range: Compute MSE, PSNR and SSIM on images mapped to [0, 1] with ``data_range=1`` (the GNIME
            paper's convention; the MSE is a quarter of the MSE in [-1, 1], PSNR is unchanged, SSIM changes
            slightly because its luminance term is not shift-invariant); ``False`` keeps genprov's [-1, 1].
        seed: Seed of the bootstrap.
        n_boot: Bootstrap resamples.
        batch_size: Images per classifier forward pass.

    Returns:
        ``{"mse", "psnr", "ssim"[, "reclassification_accuracy"][, "tca"][, "feature_similarity"]}`` ->
        :class:`~genprov.eval.stats.MeanCI`. Lower MSE, higher PSNR/SSIM/accuracies/similarity = more
        leakage.

    Raises:
        DataError: Mismatched shapes, a classifier without labels, or an exact reconstruction (infinite
            PSNR cannot be averaged).
    """
    tx, ty = _pair(reconstructions, originals)
    if unit_range:
        tx, ty = (tx + 1) / 2, (ty + 1) / 2
    peak = 1.0 if unit_range else 2.0
    per_image: dict[str, Tensor] = {
        "mse": mse(tx, ty),
        "psnr": psnr(tx, ty, data_range=peak),
        "ssim": ssim(tx, ty, data_range=peak),
    }
    if (victim is not None or evaluator is not None) and labels is None:
        raise DataError("labels are needed for the re-classification accuracy and TCA; pass labels=(n,) classes.")
    if victim is not None and labels is not None:
        per_image["reclassification_accuracy"] = classification_hits(
            victim, reconstructions, labels, batch_size=batch_size
        )
    if evaluator is not None and labels is not None:
        per_image["tca"] = classification_hits(evaluator, reconstructions, labels, batch_size=batch_size)
        if callable(getattr(evaluator, "features", None)):
            per_image["feature_similarity"] = feature_similarity(
                evaluator, reconstructions, originals, batch_size=batch_size
            )
    if not bool(torch.isfinite(per_image["psnr"]).all()):
        raise DataError(
            "Some reconstructions equal their originals exactly (infinite PSNR); the mean PSNR is undefined. "
            "Check that the attack did not receive the originals."
        )
    return {name: summarize(values, seed=seed, n_boot=n_boot) for name, values in per_image.items()}
