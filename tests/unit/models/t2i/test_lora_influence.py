"""A DreamBooth LoRA customization measurably pulls its samples towards the exemplar (a tiny case, one thread).

The customized pipeline's samples from the token's prompt are compared with the base pipeline's samples from the
same seeds and the prompt without the token, in latent space (what the LoRA learns to denoise towards: the exemplar's
VAE latent). A negative control, the same customization with a learning rate of 1e-12 (a no-op adapter and an
untrained token), must fail the margin, so the test measures the training and not the token's random embedding.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genprov.models.t2i import LoRAConfig, tiny_pipeline, train_dreambooth_lora
from genprov.utils.seeding import torch_generator

torch.set_num_threads(1)

PROMPT = "a handwritten <v1> seven"
BASE_PROMPT = "a handwritten seven"
#: Measured: 40 steps at lr 1e-2 bring the samples to 0.925x the base's distance to the exemplar's latent, the change
#: pointing towards it (mean cosine 0.45); the no-op control stays at 1.001x (cosine -0.06); 50 steps gain nothing
#: (0.922x). About 11 s of one core. Pixels are no measure here: the tiny pipeline's VAE is random, its decoder maps
#: the exemplar's latent to noise as far from the exemplar as any other latent's.
CONFIG = LoRAConfig(
    rank=4, lr=1e-2, steps=40, batch_size=8, n_class_images=2, class_sample_steps=2, checkpoint_every=0, log_every=10
)
#: Samples must come at least this much closer (relative) to the exemplar than the base pipeline's.
MARGIN = 0.95
N_SAMPLES = 4


def _exemplar() -> torch.Tensor:
    """A structured 16x16 RGB image (two coloured blocks on black)."""
    x = -torch.ones(1, 3, 16, 16)
    x[:, 0, 3:9, 4:12] = 1.0
    x[:, 1, 8:14, 2:7] = 0.5
    return x


def _latents(pipe: object, prompt: str) -> torch.Tensor:
    """Final latents of ``N_SAMPLES`` samples of ``prompt``, sample ``i`` from the seed of ``i``."""
    return pipe(  # type: ignore[operator]
        [prompt] * N_SAMPLES,
        num_inference_steps=10,
        guidance_scale=1.0,
        output_type="latent",
        generator=[torch_generator(0, "influence", i) for i in range(N_SAMPLES)],
    ).images


def _rms(latents: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (latents - target).flatten(1).square().mean(1).sqrt()


def test_customization_pulls_samples_towards_the_exemplar(tmp_path: Path) -> None:
    exemplar = _exemplar()
    base = tiny_pipeline()
    with torch.no_grad():
        target = base.vae.encode(exemplar).latent_dist.mean * base.vae.config.scaling_factor
    before = _latents(base, BASE_PROMPT)

    def ratio_and_direction(config: LoRAConfig, out: str) -> tuple[float, float]:
        result = train_dreambooth_lora(
            tiny_pipeline(), exemplar, config, tmp_path / out, instance_prompt=PROMPT, token="<v1>"
        )
        after = _latents(result.pipeline, PROMPT)
        ratio = float(_rms(after, target).mean() / _rms(before, target).mean())
        cosine = torch.nn.functional.cosine_similarity((after - before).flatten(1), (target - before).flatten(1))
        return ratio, float(cosine.mean())

    ratio, direction = ratio_and_direction(CONFIG, "lora")
    assert ratio < MARGIN, f"customized samples are {ratio:.3f}x the base's distance to the exemplar"
    assert direction > 0.3  # the samples moved towards the exemplar, not just anywhere
    # negative control: the same run with a no-op adapter (lr 1e-12) stays at the base's distance
    no_op, no_op_direction = ratio_and_direction(CONFIG.replace(steps=1, lr=1e-12), "no-op")
    assert no_op > MARGIN and abs(no_op - 1) < 0.02
    assert no_op_direction < direction - 0.2
