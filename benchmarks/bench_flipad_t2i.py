"""FLIPAD on a latent diffusion model's VAE decoder: genprov's batched FISTA vs scikit-learn's ``Lasso``.

The layer is ``decoder.conv_out`` (a 3x3 ``Conv2d``, 32 -> 3 channels, identity activation) of the default
32x32 text-to-image pipeline (``genprov.models.t2i.T2IConfig()``, VAE weights as built: no trained pipeline is
needed to time the solver). Its full problem (3072 equations, 32768 unknowns) is too large for scikit-learn in
minutes (the dense matrix alone is 0.8 GB), so the problems are FLIPAD's inversions of a 16x16 window of it
(the same layer on a 32x16x16 input: 768 equations, 8192 unknowns, 10.7 unknowns per equation as for the full
image): targets ``x - b - W z_bar`` of the VAE's own 8-bit decodings and of real digits (grey, repeated to
RGB), ``z_bar`` the mean ``conv_out`` input over the encoded own images. The comparison is
:func:`benchmarks.bench_flipad.compare`'s: scikit-learn's coordinate descent per sample on the dense matrix,
FISTA in float32 on the batch at the smallest iteration count whose mean objective is not above
scikit-learn's, both timed by the protocol of :mod:`benchmarks.timing`.

Run: ``python -m benchmarks.run --only flipad_t2i [--quick]``.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.bench_flipad import PROTOCOL, compare, rows_load_note
from benchmarks.timing import load_average
from genprov.attribution.model import FinalLayerInversionAttributor, FinalLayerInversionAttributorConfig
from genprov.attribution.model.inversion import LinearOperator, operator_for
from genprov.data import load_dataset, png_roundtrip
from genprov.models.t2i import T2IConfig, build_components
from genprov.utils.seeding import torch_generator

#: Side of the window of the decoder's last layer that the problems cover.
WINDOW = 16


def _problems(n: int) -> dict[str, tuple[LinearOperator, torch.Tensor]]:
    """Per source, the windowed ``conv_out`` operator and ``n`` right-hand sides."""
    vae = build_components(T2IConfig(), seed=0)["vae"]
    with torch.no_grad():
        latents = torch.randn(64 + n, 4, 8, 8, generator=torch_generator(0, "bench-latents"))
        own = png_roundtrip(vae.decode(latents).sample.clamp(-1, 1))
    flipad = FinalLayerInversionAttributor(vae, FinalLayerInversionAttributorConfig(n_anchor=64)).prepare(own[:64])
    anchor = flipad.anchor_[:, :WINDOW, :WINDOW]
    op = operator_for(vae.decoder.conv_out, tuple(anchor.shape))
    real = load_dataset("digits", split="test", resize=32).images[:n].repeat(1, 3, 1, 1)
    out = {}
    for source, images in (("own", own[64:]), ("real", png_roundtrip(real))):
        y = images[:, :, :WINDOW, :WINDOW]
        bias = op.bias if op.bias is not None else 0.0
        with torch.no_grad():
            out[source] = (op, y - bias - op.matvec(anchor[None]))
    return out


def run(quick: bool) -> str:
    """Markdown section: FISTA vs scikit-learn Lasso on the LDM decoder's conv_out at equal objective."""
    torch.set_num_threads(1)
    n = 2 if quick else 4
    alpha = 5e-4
    problems = _problems(n)
    load_before = load_average()
    rows: list[dict[str, Any]] = [
        {"source": source, **compare(op, target, alpha)} for source, (op, target) in problems.items()
    ]
    load_after = load_average()
    lines = [
        "### FLIPAD inversion of a latent diffusion decoder's conv_out: batched FISTA vs scikit-learn Lasso",
        "",
        f"{n} lasso problems per row, alpha = {alpha:g} (the paper's for Stable Diffusion): the default 32x32 "
        "pipeline's VAE `decoder.conv_out` (Conv2d 32 -> 3, 3x3) on a 16x16 window (768 equations x 8192 "
        "unknowns; the full 32x32 layer, 3072 x 32768, does not fit scikit-learn in minutes), targets from the "
        "VAE's own 8-bit decodings or real digits. scikit-learn: one `Lasso(alpha / m, fit_intercept=False)` per "
        "sample on the dense matrix, default tol; FISTA: float32, whole batch, the smallest iteration count (to "
        "1/16) whose mean objective is not above scikit-learn's. " + PROTOCOL,
        "",
        "| images | sklearn (s) | sklearn samples/s | FISTA iters | FISTA (s) | FISTA samples/s | speed-up "
        "| objective gap mean / max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['sklearn_s'].cell('.2f')} | {r['n'] / r['sklearn_s'].median:.2f} "
            f"| {r['fista_iters']} | {r['fista_s'].cell('.3f')} | {r['n'] / r['fista_s'].median:.1f} "
            f"| **{r['ratio']:.0f}x** | {r['gap_mean']:+.1e} / {r['gap_max']:+.1e} |"
        )
    lines += ["", rows_load_note(load_before, load_after, rows), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run(quick=True))
