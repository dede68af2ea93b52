"""FLIPAD on a text-to-image pipeline's VAE decoder: the lasso inversion of ``decoder.conv_out`` equals
scikit-learn's Lasso, and the attributor takes a pipeline (its ``vae``) and the images the pipeline samples."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from flipad_test_helpers import FAST_DETECTOR
from sklearn.linear_model import Lasso
from torch import Tensor

from genprov.attribution.model import (
    FinalLayerInversionAttributor,
    FinalLayerInversionAttributorConfig,
    autoencoder_of,
    fista_lasso,
    lasso_objective,
    operator_for,
    resolve_final_layer,
)
from genprov.exceptions import ConfigError

pytest.importorskip("diffusers")
from genprov.models.t2i import sample_pipeline, tiny_pipeline


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tiny_pipeline(0)


@pytest.fixture(scope="module")
def own(pipe: Any) -> Tensor:
    """Images the tiny pipeline generates (5 DDIM steps: only their passage through the decoder matters here)."""
    return sample_pipeline(pipe, ["a photo of a horse", "a handwritten seven"], 12, seed=0, steps=5)


def sklearn_objectives(op: Any, target: Tensor, alpha: float) -> Tensor:
    """The lasso objective ``1/2 ||y - W d||^2 + alpha ||d||_1`` at scikit-learn's minimiser, per row of
    ``target`` (sklearn's ``alpha`` is ours over the number of rows: see ``inversion``'s module docstring)."""
    matrix = op.to_matrix()
    m = matrix.shape[0]
    out = []
    for row in target.flatten(1):
        coef = Lasso(alpha=alpha / m, fit_intercept=False, tol=1e-12, max_iter=200_000).fit(matrix.numpy(), row.numpy())
        d = torch.from_numpy(coef.coef_).reshape(1, *op.in_shape)
        out.append(lasso_objective(op, row.reshape(1, *op.out_shape), d, alpha)[0])
    return torch.stack(out)


@pytest.mark.parametrize("alpha", [0.01, 0.1])
def test_decoder_conv_out_lasso_equals_sklearn_in_float64(pipe: Any, own: Tensor, alpha: float) -> None:
    vae = copy.deepcopy(pipe.vae).double()
    name, layer, act = resolve_final_layer(vae)
    assert (name, act.name) == ("decoder.conv_out", "identity")
    # a small case of the same layer: a 6x6 window of its input (8 channels -> 3x6x6 outputs, 288 unknowns)
    op = operator_for(layer, (layer.in_channels, 6, 6), sparse=False)
    y = own[:3, :, :6, :6].double() - op.bias
    ours = fista_lasso(op, y, alpha, max_iter=50_000, tol=1e-13)
    assert bool(ours.converged.all())
    mine = lasso_objective(op, y, ours.solution, alpha)
    theirs = sklearn_objectives(op, y, alpha)
    torch.testing.assert_close(mine, theirs, rtol=1e-7, atol=0)


def test_attributor_inverts_the_pipeline_vae_to_the_lasso_optimum(pipe: Any, own: Tensor) -> None:
    """Through the attributor (float32, 16x16 images): its features ``z_bar + d`` reach the objective
    scikit-learn's Lasso reaches on the same problem."""
    alpha = 0.1
    config = FinalLayerInversionAttributorConfig(
        alpha=alpha, max_iter=20_000, tol=1e-9, n_anchor=16, detector=FAST_DETECTOR, fista_init="zero"
    )
    flipad = FinalLayerInversionAttributor(pipe, config).prepare(own)
    assert flipad.generator is pipe.vae and flipad.final_layer_name_ == "decoder.conv_out"
    x = own[:1]
    features = flipad.features(x)  # pool_to=32 > 16: no pooling
    op = operator_for(copy.deepcopy(pipe.vae.decoder.conv_out).double(), tuple(flipad.anchor_.shape), sparse=False)
    anchor = flipad.anchor_.double()
    y = x.double() - op.bias - op.matvec(anchor[None])
    mine = lasso_objective(op, y, features.double() - anchor, alpha)
    theirs = sklearn_objectives(op, y, alpha)
    assert bool((mine <= theirs * (1 + 1e-3)).all()), (mine, theirs)


def test_pipeline_stands_for_its_vae_and_fits_on_its_samples(pipe: Any, own: Tensor) -> None:
    other = sample_pipeline(tiny_pipeline(1), ["a photo of a horse"], 8, seed=1, steps=5)
    config = FinalLayerInversionAttributorConfig(
        max_iter=30, n_anchor=16, detector=FAST_DETECTOR, holdout_fraction=0.25
    )
    flipad = FinalLayerInversionAttributor(pipe, config).fit(own, negatives=other)
    assert flipad.anchor_.shape == (8, 16, 16)
    scores = flipad.score_samples(torch.cat([own[:2], other[:2]]))
    assert scores.shape == (4,) and bool(torch.isfinite(scores).all())
    assert autoencoder_of(pipe) is pipe.vae and autoencoder_of(pipe.unet) is pipe.unet
    with pytest.raises(ConfigError, match="AutoencoderKL"):
        autoencoder_of(pipe.unet, "aeroblade")
