"""Examples with per-example conditioning: the training and query sets of a text-to-image model.

A text-to-image latent diffusion model denoises a latent given a text embedding, so an example for gradient
attribution is the pair (latent, context), not an image alone. :class:`ConditionedExamples` holds both,
row-aligned, with the captions they were encoded from; ``genprov.models.t2i.encode_examples`` makes one from
images and captions with a pipeline's VAE and text encoder, and ``TRAKAttributor`` takes it wherever it takes
an image tensor.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from genprov.exceptions import DataError

__all__ = ["ConditionedExamples"]


@dataclasses.dataclass(frozen=True)
class ConditionedExamples:
    """Row-aligned latents and their conditioning.

    Attributes:
        latents: (n, C, h, w) float latents (for Stable Diffusion: the VAE posterior's mode times
            ``scaling_factor``).
        context: (n, L, D) float conditioning (the text encoder's last hidden state of each caption).
        captions: The n captions the context was encoded from (empty when unknown).
    """

    latents: Tensor
    context: Tensor
    captions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.latents, Tensor) or self.latents.ndim != 4 or not self.latents.is_floating_point():
            shape = tuple(self.latents.shape) if isinstance(self.latents, Tensor) else type(self.latents).__name__
            raise DataError(f"latents must be a float tensor (n, C, h, w); got {shape}.")
        if not isinstance(self.context, Tensor) or self.context.ndim != 3 or not self.context.is_floating_point():
            shape = tuple(self.context.shape) if isinstance(self.context, Tensor) else type(self.context).__name__
            raise DataError(f"context must be a float tensor (n, L, D) of text embeddings; got {shape}.")
        if len(self.context) != len(self.latents):
            raise DataError(
                f"{len(self.latents)} latents but {len(self.context)} contexts; give one caption per example."
            )
        if self.captions and len(self.captions) != len(self.latents):
            raise DataError(f"{len(self.captions)} captions for {len(self.latents)} latents; give one per example.")
        for name in ("latents", "context"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise DataError(f"{name} contain NaN or infinite values; encode the examples again.")

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, rows: slice | Tensor | list[int]) -> ConditionedExamples:
        """The examples ``rows`` (a slice or integer indices)."""
        if isinstance(rows, slice):
            captions = self.captions[rows]
        else:
            index = rows.tolist() if isinstance(rows, Tensor) else list(rows)
            captions = tuple(self.captions[i] for i in index) if self.captions else ()
        return ConditionedExamples(self.latents[rows], self.context[rows], captions)

    @property
    def shape(self) -> tuple[int, ...]:
        """The latents' shape (n, C, h, w)."""
        return tuple(self.latents.shape)
