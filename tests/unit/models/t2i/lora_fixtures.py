"""A tiny Stable Diffusion pipeline for the LoRA tests, built from the real diffusers / transformers classes.

16x16 RGB images, 4x4x4 latents, a 2-layer CLIP text encoder of width 32 and a CLIP tokenizer written from a
hand-made ``vocab.json`` / ``merges.txt`` (nothing is downloaded). Random weights from a fixed seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

__all__ = ["WORDS", "tiny_pipeline", "tiny_tokenizer"]

#: Whole words of the tiny vocabulary (each one token); any other word falls back to letters.
WORDS = ("a", "photo", "of", "digit", "seven", "one", "handwritten", "horse", "car")
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def tiny_tokenizer(folder: Path, *, max_length: int = 16) -> CLIPTokenizer:
    """A CLIP tokenizer over letters and :data:`WORDS`, written to ``folder`` and read back."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab: list[str] = [*letters, *(f"{c}</w>" for c in letters)]
    merges: list[str] = []
    for word in WORDS:  # merge left to right: p h -> ph, ph o -> pho, ..., ending with the </w> piece
        pieces = [*word[:-1], f"{word[-1]}</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            if pieces[0] not in vocab:
                vocab.append(pieces[0])
    vocab += [_BOS, _EOS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=max_length
    )


def tiny_pipeline(folder: Path, *, seed: int = 0, width: int = 32) -> StableDiffusionPipeline:
    """A random tiny ``StableDiffusionPipeline`` (its tokenizer files live in ``folder``); ``width`` is the text
    encoder's hidden size and the UNet's cross-attention size (another width: another base model)."""
    tokenizer = tiny_tokenizer(folder / "tokenizer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=4,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=width,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=width,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=100,
        steps_offset=1,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
