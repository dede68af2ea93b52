"""Explainers against references: captum's Saliency and LayerGradCam, and LRP by hand in float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from torch import nn

from genprov.exceptions import ConfigError, DataError
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.privacy import (
    EXPLAINERS,
    GradCAMConfig,
    GradCAMExplainer,
    LRPConfig,
    LRPExplainer,
    Observations,
    lrp_layers,
    postprocess_maps,
)

torch.set_num_threads(1)


def _images(n: int = 6, channels: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _cnn(channels: int = 1, seed: int = 0) -> CNNClassifier:
    torch.manual_seed(seed)
    return CNNClassifier(ClassifierConfig(channels=channels, width=4, feature_dim=8, n_classes=5)).eval()


# ------------------------------------------------------------------------------------- post-processing


def test_postprocess_is_abs_then_per_image_min_max() -> None:
    maps = torch.tensor([[[[-2.0, 1.0], [0.0, 3.0]]], [[[5.0, 5.0], [5.0, 5.0]]]])
    out = postprocess_maps(maps)
    torch.testing.assert_close(out[0, 0], torch.tensor([[2 / 3, 1 / 3], [0.0, 1.0]]))
    assert torch.equal(out[1], torch.zeros(1, 2, 2))  # constant map -> zeros
    two_channels = torch.tensor([[[[1.0, -1.0]], [[-3.0, 0.0]]]])  # channel sum first: [-2, -1] -> abs [2, 1]
    torch.testing.assert_close(postprocess_maps(two_channels), torch.tensor([[[[1.0, 0.0]]]]))


# -------------------------------------------------------------------------------------------- gradient


@pytest.mark.parametrize("channels", [1, 3])
def test_gradient_matches_captum_saliency(channels: int) -> None:
    model, x = _cnn(channels), _images(channels=channels)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    ex = EXPLAINERS.create("gradient", model)
    ref = Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=False)
    torch.testing.assert_close(ex.attribute(x, target), ref.detach())
    # default target = the predicted class (maximal logit); explain = the paper's post-processing
    pred = model(x).argmax(1)
    ref_pred = Saliency(model).attribute(x.clone().requires_grad_(True), target=pred, abs=False).detach()
    torch.testing.assert_close(ex.explain_raw(x), ref_pred.sum(1, keepdim=True))
    out = ex.explain(x)
    assert out.shape == (6, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, postprocess_maps(ref_pred))


def test_explanations_do_not_depend_on_batch_size() -> None:
    model, x = _cnn(), _images(7)
    for name in ("gradient", "grad-cam", "lrp"):
        big = EXPLAINERS.create(name, model).explain(x)
        small = EXPLAINERS.create(name, model, config={"batch_size": 2}).explain(x)
        torch.testing.assert_close(big, small, msg=name)


# -------------------------------------------------------------------------------------------- Grad-CAM


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_grad_cam_matches_captum_layer_grad_cam(mode: str) -> None:
    model, x = _cnn(), _images()
    ex = GradCAMExplainer(model, GradCAMConfig(upsample=mode))  # type: ignore[arg-type]
    # the last conv is conv.5; the ReLU right after it (conv.6) is the feature map, as in Keras models
    assert ex.layer_name == "conv.6" and ex.layer is model.conv[6]
    target = model(x).argmax(1)
    cam = LayerGradCam(model, ex.layer).attribute(x, target=target, relu_attributions=True)
    ref = LayerAttribution.interpolate(cam, (8, 8), mode).detach()
    torch.testing.assert_close(ex.attribute(x), ref)
    assert ex.explain(x).shape == (6, 1, 8, 8)


def test_grad_cam_on_a_named_layer_matches_captum() -> None:
    model, x = _cnn(3), _images(channels=3)
    ex = EXPLAINERS.create("grad-cam", model, config=GradCAMConfig(layer="conv.3", relu=False))
    target = torch.tensor([1, 1, 2, 2, 3, 3])
    cam = LayerGradCam(model, model.conv[3]).attribute(x, target=target, relu_attributions=False)
    ref = LayerAttribution.interpolate(cam, (8, 8), "bilinear").detach()
    torch.testing.assert_close(ex.attribute(x, target), ref)


def test_grad_cam_weights_are_per_sample_unless_pooled_over_batch() -> None:
    model, x = _cnn(), _images()
    per_sample = EXPLAINERS.create("grad-cam", model)
    one_by_one = torch.cat([per_sample.attribute(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(per_sample.attribute(x), one_by_one)
    pooled = EXPLAINERS.create("grad-cam", model, config=GradCAMConfig(pool_over_batch=True))
    # reference: one weight vector from the gradients averaged over batch and space
    acts: list[torch.Tensor] = []
    handle = model.conv[6].register_forward_hook(lambda m, i, o: acts.append(o))
    logits = model(x)
    handle.remove()
    target = logits.argmax(1)
    (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), acts[0])
    cam = torch.relu((grads.mean(dim=(0, 2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True)).detach()
    ref = torch.nn.functional.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pooled.attribute(x), ref)
    mixed = torch.tensor([0, 1, 2, 3, 4, 0])  # different classes: pooled weights mix their gradients
    diff = (pooled.attribute(x, mixed) - per_sample.attribute(x, mixed)).abs().max()
    assert float(diff) > 0.1 * float(per_sample.attribute(x, mixed).abs().max())


def test_grad_cam_without_conv_layer_names_the_model() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ConfigError, match=r"Grad-CAM needs a convolutional layer.*Sequential has no nn.Conv2d"):
        EXPLAINERS.create("grad-cam", model).explain(_images())
    with pytest.raises(ConfigError, match=r"layer 'conv.99' is not a module of CNNClassifier"):
        EXPLAINERS.create("grad-cam", _cnn(), config=GradCAMConfig(layer="conv.99")).explain(_images())


# ------------------------------------------------------------------------------------------------- LRP


def _conv_matrix(w: np.ndarray, in_hw: tuple[int, int], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense (out, in) matrix of a stride-1 conv and its connectivity mask, by explicit loops."""
    c_out, c_in, k, _ = w.shape
    h, wd = in_hw
    oh, ow = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    mat = np.zeros((c_out * oh * ow, c_in * h * wd))
    mask = np.zeros_like(mat)
    for co in range(c_out):
        for i in range(oh):
            for j in range(ow):
                row = co * oh * ow + i * ow + j
                for ci in range(c_in):
                    for ky in range(k):
                        for kx in range(k):
                            y, xx = i + ky - pad, j + kx - pad
                            if 0 <= y < h and 0 <= xx < wd:
                                col = ci * h * wd + y * wd + xx
                                mat[row, col] = w[co, ci, ky, kx]
                                mask[row, col] = 1.0
    return mat, mask


def _pool_windows(c: int, h: int, w: int) -> list[list[int]]:
    """Flat input indices of each 2x2 window (stride 2), in output order."""
    out = []
    for ch in range(c):
        for i in range(h // 2):
            for j in range(w // 2):
                out.append([ch * h * w + (2 * i + di) * w + 2 * j + dj for di in (0, 1) for dj in (0, 1)])
    return out


def _reference_lrp(model: nn.Sequential, x: np.ndarray, target: int, rule: str, eps: float) -> np.ndarray:
    """LRP of the tiny network below with explicit float64 matrices (flat rule at the input conv)."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    c1, m1 = _conv_matrix(p["0.weight"], (4, 4), 1)
    c2, _ = _conv_matrix(p["3.weight"], (2, 2), 1)
    b1, b2 = np.repeat(p["0.bias"], 16), np.repeat(p["3.bias"], 4)
    a0 = x.reshape(-1)
    a1 = np.maximum(c1 @ a0 + b1, 0)  # conv1 + ReLU: (2*4*4,)
    win = _pool_windows(2, 4, 4)
    arg = [w[int(np.argmax(a1[w]))] for w in win]
    a2 = a1[arg]  # max pool: (2*2*2,)
    a3 = np.maximum(c2 @ a2 + b2, 0)  # conv2 + ReLU: (3*2*2,)
    pool = np.zeros((3, 12))
    for ch in range(3):
        pool[ch, ch * 4 : ch * 4 + 4] = 0.25
    a4 = pool @ a3  # avg pool 2x2 -> (3,)
    l1w, l1b, l2w, l2b = p["7.weight"], p["7.bias"], p["9.weight"], p["9.bias"]
    a5 = np.maximum(l1w @ a4 + l1b, 0)
    out = l2w @ a5 + l2b
    r = np.zeros_like(out)
    r[target] = out[target]

    def weighted(w: np.ndarray, b: np.ndarray, a: np.ndarray, r: np.ndarray) -> np.ndarray:
        if rule == "z-plus":
            contrib = np.maximum(a, 0)[None, :] * np.maximum(w, 0) + np.minimum(a, 0)[None, :] * np.minimum(w, 0)
            z = contrib.sum(1)
            s = np.divide(r, z, out=np.zeros_like(r), where=z != 0)
        else:
            contrib = a[None, :] * w
            z = contrib.sum(1) + b
            s = r / (z + eps * np.where(z >= 0, 1.0, -1.0))
        return (contrib * s[:, None]).sum(0)

    r = weighted(l2w, l2b, a5, r)  # head
    r = weighted(l1w, l1b, a4, r)  # hidden (ReLU in between passes relevance through)
    r = weighted(pool, np.zeros(3), a3, r)  # average pooling: weights 1/4, no bias
    r = weighted(c2, b2, a2, r)  # conv2
    r_pool = np.zeros(32)
    for j, i in enumerate(arg):  # max pooling: winner takes all
        r_pool[i] += r[j]
    z = m1.sum(1)  # flat rule: uniform over each neuron's receptive field
    return ((m1 / z[:, None]) * r_pool[:, None]).sum(0).reshape(x.shape)


def _tiny_net() -> nn.Sequential:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(3, 5),
        nn.ReLU(),
        nn.Linear(5, 4),
    )
    with torch.no_grad():  # positive-leaning weights so that relevance flows through every layer
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.add_(0.3)
    return net.double().eval()


@pytest.mark.parametrize("rule", ["z-plus", "epsilon"])
def test_lrp_matches_hand_computed_float64_network(rule: str) -> None:
    net = _tiny_net()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    target = torch.tensor([0, 2, 3])
    ex = LRPExplainer(net, LRPConfig(rule=rule, epsilon=0.05))  # type: ignore[arg-type]
    got = ex.attribute(x, target)
    assert got.dtype == torch.float64
    for i in range(3):
        ref = _reference_lrp(net, x[i].numpy(), int(target[i]), rule, 0.05)
        np.testing.assert_allclose(got[i].numpy(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
def test_lrp_z_plus_conserves_relevance_layer_by_layer(channels: int) -> None:
    model, x = _cnn(channels), _images(channels=channels)
    records = LRPExplainer(model).relevance(x)
    names = [name for name, _ in records]
    assert names[0] == "conv.0" and names[-1] == "output" and "pool" in names and "flatten" in names
    logit = model(x).max(1).values.detach()
    torch.testing.assert_close(records[-1][1].sum(1), logit)
    for name, rel in records:
        torch.testing.assert_close(rel.flatten(1).sum(1), logit, rtol=1e-4, atol=1e-6, msg=name)


def test_lrp_epsilon_is_registered_with_its_default_rule() -> None:
    ex = EXPLAINERS.create("lrp-epsilon", _cnn())
    assert isinstance(ex, LRPExplainer) and ex.config.rule == "epsilon"
    assert EXPLAINERS.names() == ["grad-cam", "gradient", "lrp", "lrp-epsilon"]
    maps = ex.explain(_images())
    assert maps.shape == (6, 1, 8, 8) and float(maps.max()) == 1.0


def test_lrp_unsupported_layer_and_model_are_named() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(72, 3))
    with pytest.raises(ConfigError, match=r"no rule for layer '1' \(Sigmoid\) of Sequential"):
        EXPLAINERS.create("lrp", net).explain(_images())

    class Custom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    with pytest.raises(ConfigError, match="got Custom"):
        lrp_layers(Custom())


# ---------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_get_clear_errors() -> None:
    ex = EXPLAINERS.create("gradient", _cnn())
    with pytest.raises(DataError, match="Add a batch dimension"):
        ex.explain(torch.zeros(1, 8, 8))
    with pytest.raises(DataError, match=r"class indices in \[0, 5\)"):
        ex.explain(_images(2), torch.tensor([0, 7]))
    with pytest.raises(DataError, match=r"target must be a \(n,\) = \(2,\)"):
        ex.explain(_images(2), torch.tensor([0]))
    with pytest.raises(ConfigError, match=r"Unknown explainer 'gradcam'\. Did you mean 'grad-cam'"):
        EXPLAINERS.create("gradcam", _cnn())


def test_observe_pairs_maps_and_probabilities() -> None:
    model, x = _cnn(), _images()
    obs = EXPLAINERS.create("gradient", model).observe(x)
    assert obs.explanations is not None and obs.explanations.shape == (6, 1, 8, 8)
    torch.testing.assert_close(obs.predictions, torch.softmax(model(x), 1).detach())
    assert len(obs[torch.tensor([0, 2])]) == 2 and len(Observations.concat([obs, obs])) == 12
    with pytest.raises(DataError, match="3 explanations and 6 prediction vectors"):
        Observations(explanations=obs.explanations[:3], predictions=obs.predictions)
