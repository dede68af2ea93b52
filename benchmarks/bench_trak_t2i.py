"""D-TRAK featurization of a text-to-image pipeline on a CPU: LoRA-only vs all U-Net parameters, and traker.

Every method featurizes the same captioned training images of the same pipeline: the default
:class:`~genprov.models.t2i.T2IConfig` (32x32 RGB images, 8x8x4 latents, U-Net of (64, 128) channels with
cross-attention, 4.2M parameters) with a LoRA of the ArtBench kind (:class:`~genprov.models.t2i.LoRAConfig`
defaults: rank 4 on ``to_q``, ``to_k``, ``to_v``, ``to_out.0``; 43k parameters; random seeded weights, ``B``
drawn at 0.1 scale since a fresh adapter's ``B = 0`` zeroes ``A``'s gradient). The images are digits resized
to 32x32 (grey repeated to RGB) with their captions (``"a handwritten seven"``), encoded once with the VAE and
the text encoder (``encode_examples``). The output is D-TRAK's ``squared-l2-norm`` of the conditional noise
prediction given the caption, averaged over the same K uniform timesteps with the same noise per example;
gradients are projected to k dimensions. Each run of a method is its own spawned single-threaded process;
timings exclude imports, the pipeline's construction, the encoding and a warm-up on the first batch. The
timed methods run interleaved three times (:mod:`benchmarks.timing`): the table gives the median seconds per
example with the range, ratios of medians, the median peak, and the load average before and after (flagged
when it moved by more than 0.5).

- **floor**: one plain batched forward + backward pass over the B x K noisy latents of each batch of the
  training set (all U-Net parameters), per example.
- **genprov LoRA** / **genprov all**: ``TRAKAttributor.for_pipeline`` with ``include=LORA_PARAMETER_GLOBS``
  or no filter, ``per_example="auto"`` (the mode it picks is in the table), and each forced mode; sjlt
  projection; vmap runs diffusers' SDPA attention through torch's per-example fallback (it has no batching
  rule). **vmap, plain attention**: ``LatentDenoiser(..., attention="plain")``, D-TRAK's choice: vmapped
  gradients through diffusers' plain ``AttnProcessor``.
- **traker LoRA**: ``TRAKer`` on CPU (``BasicProjector``, Gaussian, float32) with a custom
  ``AbstractModelOutput`` computing the same output through the same ``LatentDenoiser`` (native attention),
  on a model whose parameters are the LoRA tensors (traker
  differentiates every parameter of the model it is given: ``grad_wrt`` only discards the rest afterwards);
  ``out_to_loss`` = 1 (no Q term, as in D-TRAK).

Agreement: traker's per-example gradients before projection against genprov's (largest difference over the
largest gradient, on the first batch), and the Spearman correlation of each method's (query x train)
scores with the exact LoRA scores (identity projection, float64 kernel), with the same lambda (0.1 x the
mean squared norm of the exact LoRA gradients; traker's is divided by its ``sqrt(n_params)`` feature
scaling). All-parameter features score another kernel: their Spearman with the exact LoRA scores measures
how much the LoRA-only restriction changes the attribution, not an error.

traker is optional: ``pip install --no-deps traker`` (it needs neither torchvision nor anything else here);
without it its row says "not installed".
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from benchmarks.memory import reset_peak, status_mb
from benchmarks.peers import traker_run
from benchmarks.timing import in_child, spawned_trials

N_TIMESTEPS = 10
BATCH = 16


def _setup(n_train: int, n_queries: int) -> tuple[Any, Any, Any]:
    """The pipeline with its LoRA, and the training examples and queries encoded once (ConditionedExamples)."""
    from genprov.data import load_dataset
    from genprov.models.t2i import (
        LoRAConfig,
        T2IConfig,
        add_lora,
        build_components,
        build_pipeline,
        captions_from_labels,
        encode_examples,
        train_tokenizer,
    )
    from genprov.utils.seeding import torch_generator

    torch.set_num_threads(1)
    config = T2IConfig()
    sets = [
        load_dataset("digits", split=split, resize=config.image_size, n=n, seed=0)
        for split, n in (("train", n_train), ("test", n_queries))
    ]
    captions = [captions_from_labels(s) for s in sets]
    tokenizer = train_tokenizer(captions[0], vocab_size=config.vocab_size, max_length=config.max_length)
    pipe = build_pipeline(build_components(config, seed=0), tokenizer)
    gen = torch_generator(0, "bench-lora-b")
    with torch.no_grad():
        for name in add_lora(pipe.unet, LoRAConfig()):
            if ".lora_B." in name:
                p = pipe.unet.get_parameter(name)
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    pipe.unet.eval()
    train, queries = (
        encode_examples(pipe, s.images.repeat(1, config.channels, 1, 1), c) for s, c in zip(sets, captions, strict=True)
    )
    return pipe, train, queries


def _attributor(
    pipe: Any, k: int, damping: float, *, lora: bool, per_example: str = "auto", attention: str = "native", **kw: Any
) -> Any:
    from genprov.attribution.data.trak import TRAKAttributor, TRAKConfig
    from genprov.models.t2i import LORA_PARAMETER_GLOBS
    from genprov.models.t2i.denoiser import LatentDenoiser

    config = TRAKConfig(
        output_function="squared-l2-norm",
        n_timesteps=N_TIMESTEPS,
        proj_dim=k,
        damping=damping,
        batch_size=BATCH,
        per_example=per_example,
        include=LORA_PARAMETER_GLOBS if lora else (),
        seed=0,
        **kw,
    )
    if attention == "native":
        return TRAKAttributor.for_pipeline(pipe, config)
    return TRAKAttributor(LatentDenoiser(pipe.unet, pipe.scheduler, attention=attention), pipe.scheduler, config)


def _noisy_batch(pipe: Any, train: Any, start: int = 0) -> tuple[torch.Tensor, ...]:
    """Examples ``start .. start + B - 1`` at the K timesteps: (B K, C, h, w) noisy latents, timesteps, contexts."""
    helper = _attributor(pipe, 8, 1.0, lora=True)
    latents = train.latents[start : start + BATCH]
    t = torch.tensor(helper.timesteps).repeat(len(latents))
    noise = helper.noise(list(range(start, start + len(latents))), train.latents.shape[1:]).flatten(0, 1)
    x_t = pipe.scheduler.add_noise(latents.repeat_interleave(N_TIMESTEPS, 0), noise, t)
    return x_t, t, train.context[start : start + BATCH].repeat_interleave(N_TIMESTEPS, 0)


def _floor(pipe: Any, train: Any, queries: Any, k: int, damping: float) -> dict[str, Any]:
    """One batched forward + backward per batch of the training set, after one untimed pass (warm-up)."""
    batches = [_noisy_batch(pipe, train, s) for s in range(0, len(train), BATCH)]
    unet = pipe.unet
    unet.requires_grad_(True)

    def step(x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> None:
        unet.zero_grad()
        unet(x_t, t, encoder_hidden_states=context).sample.pow(2).mean().backward()

    step(*batches[0])  # warm-up of the backward pass (not timed)
    start = time.perf_counter()
    for batch in batches:
        step(*batch)
    return {"seconds_per_example": (time.perf_counter() - start) / len(train)}


def _genprov(pipe: Any, train: Any, queries: Any, k: int, damping: float, **kw: Any) -> dict[str, Any]:
    attributor = _attributor(pipe, k, damping, **kw)
    attributor.featurize(train[:BATCH], torch.arange(BATCH))  # warm-up at the timed shapes (not timed)
    start = time.perf_counter()
    attributor.fit(train, show_progress=False)
    seconds = time.perf_counter() - start
    return {
        "seconds_per_example": seconds / len(train),
        "scores": attributor.scores(queries).double().numpy(),
        "mode": attributor.per_example_mode,
    }


def _exact(pipe: Any, train: Any, queries: Any, k: int, damping: float) -> dict[str, Any]:
    attributor = _attributor(pipe, k, damping, lora=True, projector="identity")
    attributor.fit(train, show_progress=False)
    return {"scores": attributor.scores_from_features(attributor.featurize_queries(queries).double())}


class _LoRAModel(torch.nn.Module):
    """What traker is given: a model whose only parameters are the LoRA tensors (shared with the U-Net), so its
    gradients are taken with respect to them alone; the denoiser is held outside the module tree."""

    def __init__(self, denoiser: Any, names: list[str]) -> None:
        super().__init__()
        self.names = names
        params = dict(denoiser.named_parameters())
        self.lora = torch.nn.ParameterList([params[n] for n in names])
        object.__setattr__(self, "denoiser", denoiser)

    def weights_for(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """traker's weights (``lora.0``, ...) under the denoiser's parameter names."""
        return {n: weights[f"lora.{i}"] for i, n in enumerate(self.names)}


def _traker(pipe: Any, train: Any, queries: Any, k: int, damping: float) -> dict[str, Any]:

    from torch.func import functional_call
    from trak.modelout_functions import AbstractModelOutput

    from genprov.attribution.data.trak import query_key

    genprov = _attributor(pipe, k, damping, lora=True)
    model = _LoRAModel(genprov.model, genprov.parameter_names)
    timesteps = torch.tensor(genprov.timesteps)
    abar = pipe.scheduler.alphas_cumprod.to(torch.float32)[timesteps].reshape(-1, 1, 1, 1)
    shape = train.latents.shape[1:]
    noise = genprov.noise(list(range(len(train))), shape)
    query_noise = genprov.noise([query_key(q, c) for q, c in zip(queries.latents, queries.context, strict=True)], shape)

    class ConditionalSquaredNorm(AbstractModelOutput):
        """D-TRAK's output of one example: mean over K timesteps of mean(eps_theta(x_t, t, caption)^2)."""

        def __init__(self) -> None:
            pass

        def get_output(self, model: Any, weights: Any, buffers: Any, x0: Any, context: Any, eps: Any) -> Any:
            x_t = abar.sqrt() * x0.unsqueeze(0) + (1 - abar).sqrt() * eps
            args = (x_t, timesteps, context.unsqueeze(0).expand(len(timesteps), *context.shape))
            pred = functional_call(model.denoiser, model.weights_for(weights), args)
            return pred.pow(2).flatten(1).mean(1).mean()

        def get_out_to_loss_grad(self, model: Any, weights: Any, buffers: Any, batch: Any) -> Any:
            return torch.ones(batch[0].shape[0], 1)

    gaps: list[float] = []

    def check(traker: Any) -> None:  # gradients before projection equal genprov's (and warms traker up)
        batch = (train.latents[:BATCH], train.context[:BATCH], noise[:BATCH])
        theirs = traker.gradient_computer.compute_per_sample_grad(batch=batch)
        ours = genprov.gradients(train[:BATCH], list(range(BATCH)))
        scale = max(float(g.abs().max()) for g in ours.values())
        gaps.append(max(float((theirs[f"lora.{i}"] - ours[n]).abs().max()) for i, n in enumerate(model.names)) / scale)

    def batches(ex: Any, eps: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        return [
            (ex.latents[s : s + BATCH], ex.context[s : s + BATCH], eps[s : s + BATCH]) for s in range(0, len(ex), BATCH)
        ]

    seconds, scores = traker_run(
        model,
        ConditionalSquaredNorm(),
        batches(train, noise),
        batches(queries, query_noise),
        k=k,
        damping=damping,
        before=check,
    )
    gap = gaps[0]
    return {"seconds_per_example": seconds / len(train), "scores": scores, "gradient_gap": gap, "mode": "vmap"}


#: Table rows: (label, function, keyword arguments).
_METHODS: dict[str, tuple[Any, dict[str, Any]]] = {
    "floor (all parameters)": (_floor, {}),
    "genprov LoRA, auto": (_genprov, {"lora": True}),
    "genprov LoRA, loop": (_genprov, {"lora": True, "per_example": "loop"}),
    "genprov LoRA, vmap, plain attention": (_genprov, {"lora": True, "per_example": "vmap", "attention": "plain"}),
    "genprov all, auto": (_genprov, {"lora": False}),
    "genprov all, vmap": (_genprov, {"lora": False, "per_example": "vmap"}),
    "traker LoRA": (_traker, {}),
    "exact LoRA": (_exact, {}),
}


def _measure(method: str, n_train: int, n_queries: int, k: int, damping: float) -> dict[str, Any]:
    """Run one method in this (spawned) process: time, peak RSS above set-up, scores."""
    pipe, train, queries = _setup(n_train, n_queries)
    function, kwargs = _METHODS[method]
    x_t, t, context = _noisy_batch(pipe, train)
    with torch.no_grad():  # warm-up: allocator and oneDNN kernels
        pipe.unet(x_t, t, encoder_hidden_states=context)
    base = reset_peak()
    try:
        out = function(pipe, train, queries, k, damping, **kwargs)
    except ImportError as err:
        return {"error": f"not installed ({err.name})"}
    out["peak_mb"] = max(0.0, status_mb("VmHWM") - base)
    return out


def _damping(n_train: int, n_queries: int) -> tuple[float, int, int]:
    """The shared lambda (0.1 x the mean squared norm of the exact LoRA gradients) and the parameter counts."""
    pipe, train, _ = _setup(n_train, n_queries)
    exact = _attributor(pipe, 8, 1.0, lora=True, projector="identity")
    grads = exact.featurize(train[:BATCH], torch.arange(BATCH))
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    return 0.1 * float(grads.double().pow(2).sum(1).mean()), exact.feature_dim, n_unet


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def run(quick: bool) -> str:
    """Benchmark and return the Markdown section (see the module docstring)."""
    n_train, n_queries, k = (16, 4, 1024) if quick else (64, 8, 2048)
    damping, n_lora, n_unet = _damping(n_train, n_queries)
    exact = in_child(_measure, "exact LoRA", n_train, n_queries, k, damping)["scores"]
    timed = [m for m in _METHODS if m != "exact LoRA"]
    trials, results, times = spawned_trials(_measure, timed, n_train, n_queries, k, damping)
    floor, reference = times["floor (all parameters)"], times["genprov LoRA, auto"]
    lines = [
        "### D-TRAK featurization of a text-to-image pipeline on CPU (bench_trak_t2i)",
        "",
        f"Default `T2IConfig` pipeline (32x32 RGB, 8x8x4 latents, U-Net {n_unet / 1e6:.1f}M parameters) with a "
        f"rank-4 LoRA on the attention projections ({n_lora / 1e3:.0f}k parameters, random B), digits with their "
        f"captions, n_train={n_train}, {n_queries} queries, D-TRAK `squared-l2-norm` output, K={N_TIMESTEPS} "
        f"timesteps, k={k}, batch {BATCH}, 1 thread. Agreement: Spearman of all (query, train) scores with the "
        "exact LoRA scores (no projection); for the all-parameter rows it measures how far the LoRA-only "
        "restriction moves the scores, not an error. " + trials.note(),
        "",
        "| method | mode | s / example, median [min-max] | x genprov LoRA time | x floor | peak MB above set-up "
        "(median) | Spearman vs exact LoRA |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in timed:
        r = results[method]
        if "error" in r:
            lines.append(f"| {method} | | {r['error']} | | | | |")
            continue
        per = times[method]
        peak = float(np.median([o["peak_mb"] for o in trials.outputs[method]]))
        agree = f"{_spearman(r['scores'], exact):.3f}" if "scores" in r else "n/a"
        lines.append(
            f"| {method} | {r.get('mode', 'batched')} | {per.cell('.3f')} | {per.ratio(reference):.2f} "
            f"| {per.ratio(floor):.2f} | {peak:.0f} | {agree} |"
        )
    all_params = times["genprov all, auto"]
    lines += [
        "",
        f"All U-Net parameters / LoRA only, genprov featurization time (ratio of medians): "
        f"{all_params.ratio(reference):.1f}x.",
    ]
    r = results["traker LoRA"]
    if "scores" in r:
        lines.append(
            "traker / genprov featurization time (LoRA, same output function, ratio of medians): "
            f"{times['traker LoRA'].ratio(reference):.1f}x; "
            f"Spearman genprov vs traker scores: {_spearman(results['genprov LoRA, auto']['scores'], r['scores']):.3f}; "
            f"per-example LoRA gradients before projection, traker vs genprov (first {BATCH} examples): largest "
            f"difference {r['gradient_gap']:.1e} of the largest gradient."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))
