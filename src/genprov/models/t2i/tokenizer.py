"""A CLIP tokenizer whose BPE vocabulary is trained locally on the captions (nothing is downloaded).

:func:`train_tokenizer` trains byte-pair merges with the ``tokenizers`` library on the backend of a
transformers ``CLIPTokenizer`` (so the text is normalised and split exactly as CLIP does: NFC, whitespace
collapsed, lower case, CLIP's word pattern, byte-level symbols, ``</w>`` ending a word) and returns a
``CLIPTokenizer`` over the vocabulary ``<|startoftext|>`` (0), ``<|endoftext|>`` (1, also padding and unknown),
the 256 byte symbols, the same 256 ending a word (so every text tokenizes without an unknown token), and one
token per learned merge, in rank order. :func:`save_tokenizer_files` writes it as ``vocab.json`` +
``merges.txt``, the files of a Stable Diffusion folder's ``tokenizer/``, which ``CLIPTokenizer`` reads.

A prompt longer than the text encoder takes is refused (:func:`check_prompts`), where the pipeline would
silently cut it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genprov.exceptions import ConfigError
from genprov.utils.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import CLIPTokenizer

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PromptTooLongError",
    "check_prompts",
    "save_tokenizer_files",
    "token_count",
    "token_ids",
    "train_tokenizer",
]

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_WORD_END = "</w>"
_N_BASE = 2 + 2 * 256  # the special tokens and the byte symbols, alone and ending a word


class PromptTooLongError(ConfigError):
    """A prompt has more tokens than the pipeline's text encoder takes."""


def _clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int) -> CLIPTokenizer:
    from genprov.models.t2i.pipeline import quiet_hub, require_t2i

    require_t2i()
    with quiet_hub():
        from transformers import CLIPTokenizer

        # transformers types merges as strings, but the tokenizers BPE it builds takes (left, right) pairs
        pairs: Any = merges
        return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=max_length)


def train_tokenizer(captions: Iterable[str], *, vocab_size: int, max_length: int) -> CLIPTokenizer:
    """Train a CLIP BPE tokenizer on ``captions`` (deterministic: the same captions give the same tokenizer).

    Args:
        captions: The training captions.
        vocab_size: At most this many tokens (>= 515: the 514 base tokens and at least one merge); merges are
            learned until the vocabulary is full or no pair repeats.
        max_length: The tokenizer's ``model_max_length`` (the text encoder's positions).

    Returns:
        A transformers ``CLIPTokenizer``.
    """
    from tokenizers import pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    texts = [str(c) for c in captions]
    if not texts:
        raise ConfigError("The tokenizer needs at least one caption to learn its vocabulary from; got none.")
    if vocab_size < _N_BASE + 1:
        raise ConfigError(f"vocab_size must be at least {_N_BASE + 1}; got {vocab_size}.")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = _clip_tokenizer({BOS_TOKEN: 0, EOS_TOKEN: 1}, [], max_length).backend_tokenizer
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=alphabet,
        end_of_word_suffix=_WORD_END,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    learned = json.loads(backend.to_str())["model"]["merges"]
    vocab: dict[str, int] = {BOS_TOKEN: 0, EOS_TOKEN: 1}
    for symbol in (*alphabet, *(a + _WORD_END for a in alphabet)):
        vocab.setdefault(symbol, len(vocab))
    merges: list[tuple[str, str]] = []
    for left, right in learned:  # in rank order: dropping the last ones keeps a valid BPE
        if len(vocab) >= vocab_size:
            break
        if left + right not in vocab:
            vocab[left + right] = len(vocab)
        merges.append((left, right))
    return _clip_tokenizer(vocab, merges, max_length)


def save_tokenizer_files(tokenizer: CLIPTokenizer, folder: str | os.PathLike[str]) -> None:
    """Write the tokenizer's ``vocab.json`` and ``merges.txt`` (atomically) into ``folder``, beside what
    ``save_pretrained`` wrote, so the folder reads as a Stable Diffusion ``tokenizer/`` with any transformers."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    out = Path(folder)
    atomic_write_json(out / "vocab.json", model["vocab"])
    pairs = [p if isinstance(p, str) else " ".join(p) for p in model["merges"]]
    atomic_write_text(out / "merges.txt", "#version: 0.2\n" + "".join(f"{p}\n" for p in pairs))


def token_count(tokenizer: CLIPTokenizer, text: str) -> int:
    """Tokens of ``text`` with the start and end tokens, untruncated (without transformers' warning when it is
    longer than the tokenizer takes)."""
    from genprov.models.t2i.pipeline import quiet_hub

    with quiet_hub():
        return len(tokenizer(text, truncation=False)["input_ids"])


def check_prompts(tokenizer: CLIPTokenizer, prompts: Sequence[str], *, option: str = "--prompt") -> None:
    """Refuse a prompt with more tokens than ``tokenizer.model_max_length`` (the pipeline would cut it).

    Raises:
        PromptTooLongError: Naming the prompt, its length and the limit.
    """
    limit = int(tokenizer.model_max_length)
    for prompt in prompts:
        n = token_count(tokenizer, prompt)
        if n > limit:
            raise PromptTooLongError(
                f"{option} {prompt[:60]!r} is {n} tokens long (start and end tokens included) but this pipeline's "
                f"text encoder takes at most {limit}; shorten it."
            )


def token_ids(tokenizer: CLIPTokenizer, captions: Sequence[str], *, option: str = "--prompt") -> Tensor:
    """Token ids (n, model_max_length) padded to the tokenizer's length, as the diffusers scripts tokenize; a
    caption longer than the tokenizer allows is refused (:class:`PromptTooLongError`, via :func:`check_prompts`)."""
    check_prompts(tokenizer, captions, option=option)
    limit = int(tokenizer.model_max_length)
    ids: Tensor = tokenizer(
        list(captions), padding="max_length", max_length=limit, truncation=True, return_tensors="pt"
    ).input_ids
    return ids
