"""The BPE tokenizer trained on the captions: a CLIPTokenizer, deterministic, lossless on its captions."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from genprov.exceptions import ConfigError
from genprov.models.t2i.tokenizer import BOS_TOKEN, EOS_TOKEN, save_tokenizer_files, token_count, train_tokenizer

CAPTIONS = ["a photo of a horse", "a photo of an automobile", "a handwritten seven", "A  Handwritten one"] * 5


def test_round_trip_and_determinism() -> None:
    tok = train_tokenizer(CAPTIONS, vocab_size=600, max_length=16)
    again = train_tokenizer(CAPTIONS, vocab_size=600, max_length=16)
    assert tok.get_vocab() == again.get_vocab()
    assert tok.convert_ids_to_tokens([0, 1]) == [BOS_TOKEN, EOS_TOKEN]
    for caption in CAPTIONS:
        ids = tok(caption)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 1
        assert tok.decode(ids, skip_special_tokens=True) == " ".join(caption.lower().split())
    # frequent words became single tokens: "photo" is one token, plus start and end
    assert token_count(tok, "photo") == 3
    # any text tokenizes without the unknown token (every byte symbol is in the vocabulary)
    assert tok.unk_token_id not in tok("zebra qx 9!")["input_ids"][1:-1]
    assert len(tok) <= 600 and tok.model_max_length == 16


def test_vocab_size_caps_the_merges() -> None:
    small = train_tokenizer(CAPTIONS, vocab_size=520, max_length=16)
    assert len(small) == 520
    assert small.decode(small("a photo of a horse")["input_ids"], skip_special_tokens=True) == "a photo of a horse"
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(CAPTIONS, vocab_size=300, max_length=16)
    with pytest.raises(ConfigError, match="at least one caption"):
        train_tokenizer([], vocab_size=600, max_length=16)


def test_vocab_and_merges_files_load_as_clip_tokenizer(tmp_path: Path) -> None:
    tok = train_tokenizer(CAPTIONS, vocab_size=600, max_length=16)
    save_tokenizer_files(tok, tmp_path)
    assert (tmp_path / "merges.txt").read_text().startswith("#version: 0.2\n")
    loaded = CLIPTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    for caption in [*CAPTIONS, "an unseen zebra"]:
        assert loaded(caption)["input_ids"] == tok(caption)["input_ids"]
