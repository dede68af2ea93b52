"""Privacy metrics on hand-made cases, and the privacy splits never overlapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from genprov.data import split_indices, stratified_split_indices
from genprov.eval import (
    classification_hits,
    explanation_distortion,
    feature_similarity,
    mse,
    reclassification_accuracy,
    reconstruction_summary,
    ssim,
    summarize,
    target_classification_accuracy,
    top_pixel_overlap,
)
from genprov.exceptions import ConfigError, DataError
from genprov.privacy import privacy_splits

torch.set_num_threads(1)


class _SignClassifier(nn.Module):
    """Class 0 when the image's mean is positive, else class 1; features = the flattened image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, -m], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _const(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


def test_classification_hits_and_accuracies() -> None:
    images = _const([0.5, -0.5, 0.2, -0.1])
    labels = torch.tensor([0, 0, 0, 1])
    hits = classification_hits(_SignClassifier(), images, labels, batch_size=3)
    assert hits.dtype == torch.float64 and hits.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert reclassification_accuracy(_SignClassifier(), images, labels) == 0.75
    assert target_classification_accuracy(_SignClassifier(), images, torch.tensor([1, 1, 1, 1])) == 0.5
    assert summarize(hits).mean == 0.75
    with pytest.raises(DataError, match=r"labels must have shape \(n,\) = \(4,\)"):
        classification_hits(_SignClassifier(), images, labels[:3])
    with pytest.raises(DataError, match="integer class indices"):
        classification_hits(_SignClassifier(), images, labels.float())


def test_feature_similarity_is_the_cosine_of_features() -> None:
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    y = torch.tensor([[0.0, 1.0, 0.0, 0.0], [2.0, 4.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    x, y = x.view(4, 1, 2, 2), y.view(4, 1, 2, 2)
    sim = feature_similarity(_SignClassifier(), x, y)
    torch.testing.assert_close(sim, torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(
        feature_similarity(lambda t: t.flatten(1) + 1.0, x, x), torch.ones(4, dtype=torch.float64)
    )
    with pytest.raises(DataError, match="Sequential has no features"):
        feature_similarity(nn.Sequential(nn.Flatten()), x, y)


def test_explanation_distortion_and_top_pixel_overlap() -> None:
    original = torch.tensor([[0.9, 0.8, 0.1, 0.0, 0.2, 0.3, 0.0, 0.0, 0.1, 0.0]]).view(1, 1, 2, 5)
    defended = torch.tensor([[0.0, 0.8, 0.1, 0.0, 0.2, 0.95, 0.0, 0.0, 0.1, 0.0]]).view(1, 1, 2, 5)
    d = explanation_distortion(defended, original)
    torch.testing.assert_close(d, torch.tensor([(0.81 + 0.65**2) / 10], dtype=torch.float64))
    # top 20% = 2 pixels: original {0, 1}, defended {5, 1} -> half kept
    assert top_pixel_overlap(defended, original, q=0.2).tolist() == [0.5]
    assert top_pixel_overlap(original, original, q=0.3).tolist() == [1.0]
    assert top_pixel_overlap(defended, original, q=0.01).tolist() == [0.0]  # k = max(1, round(0.1)) = 1
    ties = torch.zeros(1, 1, 1, 4)
    assert top_pixel_overlap(ties, ties, q=0.5).tolist() == [1.0]  # ties broken by pixel order
    with pytest.raises(DataError, match=r"same shape \(n, 1, H, W\); got \(1, 1, 2, 5\) and \(1, 1, 5, 2\)"):
        explanation_distortion(defended, original.view(1, 1, 5, 2))
    with pytest.raises(DataError, match="q must be a fraction in"):
        top_pixel_overlap(defended, original, q=0.0)


def test_reconstruction_summary_is_one_table_row() -> None:
    originals = _const([0.5, -0.5, 0.2, -0.1])
    recon = originals + torch.tensor([0.1, -0.2, 0.4, 0.3]).view(-1, 1, 1, 1)
    labels = torch.tensor([0, 1, 0, 1])
    row = reconstruction_summary(recon, originals, labels=labels, victim=_SignClassifier(), evaluator=_SignClassifier())
    assert set(row) == {"mse", "psnr", "ssim", "reclassification_accuracy", "tca", "feature_similarity"}
    # MSE on [0, 1] images (the paper's convention) is a quarter of genprov's [-1, 1] MSE
    assert row["mse"].mean == pytest.approx(float(mse(recon, originals).mean()) / 4)
    assert row["mse"].mean == pytest.approx((0.01 + 0.04 + 0.16 + 0.09) / 4 / 4)
    assert row["tca"].mean == 0.75 and row["reclassification_accuracy"].mean == 0.75  # the 4th flips sign
    wide = reconstruction_summary(recon, originals, unit_range=False)
    assert wide["mse"].mean == pytest.approx(4 * row["mse"].mean) and set(wide) == {"mse", "psnr", "ssim"}
    assert wide["psnr"].mean == pytest.approx(row["psnr"].mean)  # PSNR does not depend on the range convention
    unit_ssim = ssim((recon + 1) / 2, (originals + 1) / 2, data_range=1.0).mean()
    assert row["ssim"].mean == pytest.approx(float(unit_ssim))  # SSIM's luminance term does
    with pytest.raises(DataError, match="labels are needed"):
        reconstruction_summary(recon, originals, victim=_SignClassifier())
    with pytest.raises(DataError, match="infinite PSNR"):
        reconstruction_summary(originals, originals)


def test_privacy_splits_never_overlap_and_cover_the_data() -> None:
    s = privacy_splits(103, seed=0)
    parts = list(s.as_dict().values())
    assert s.sizes() == {"defender": 52, "attacker_train": 32, "attacker_val": 9, "test": 10}  # cumulative rounding
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            assert not np.intersect1d(a, b).size
    again = privacy_splits(103, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again.as_dict().values(), strict=True))
    assert not np.array_equal(privacy_splits(103, seed=1).defender, s.defender)


def test_per_identity_splits_give_every_identity_to_every_part() -> None:
    identities = np.repeat(np.arange(40), 10)  # Olivetti: 40 people x 10 images
    s = privacy_splits(400, seed=0, labels=identities, defender=0.5, attacker_train=0.3, attacker_val=0.1, test=0.1)
    for part, per_person in zip(s.as_dict().values(), (5, 3, 1, 1), strict=True):
        counts = np.bincount(identities[part], minlength=40)
        assert (counts == per_person).all()
    parts = list(s.as_dict().values())
    assert sorted(np.concatenate(parts).tolist()) == list(range(400))
    direct = stratified_split_indices(torch.as_tensor(identities), [0.5, 0.3, 0.1, 0.1], seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, direct, strict=True))
    assert [len(p) for p in split_indices(10, [0.5, 0.5], seed=0)] == [5, 5]  # existing API unchanged


def test_bad_split_requests_get_clear_errors() -> None:
    with pytest.raises(DataError, match=r"split\(s\) attacker_val came out empty for n=5"):
        privacy_splits(5, seed=0)
    with pytest.raises(ConfigError, match="summing to at most 1"):
        privacy_splits(100, seed=0, defender=0.9)
    with pytest.raises(DataError, match=r"labels must have shape \(n,\) = \(10,\)"):
        privacy_splits(10, seed=0, labels=[0, 1])
    with pytest.raises(ConfigError, match="labels must be a 1-D sequence of integers"):
        stratified_split_indices(np.zeros(4), [0.5, 0.5], seed=0)
