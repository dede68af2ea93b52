"""Robust fine-tuning of keyed user models: the paper's budget and step decay, resumable state."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import genprov.attribution.model.keyed as keyed
from genprov.attribution.model.keyed import KeyedGeneratorsConfig, fine_tune_user
from genprov.exceptions import ConfigError, StoreMismatchError
from genprov.models.gans import GANConfig, Generator
from genprov.utils.io import read_json

TINY = GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)
#: 8 robust steps in 4 stages of 2 (lr x 0.5 after each), a state every 2 steps.
CFG = KeyedGeneratorsConfig(
    robust_steps=8, robust_batch_size=4, robust_lr=1e-2, robust_lr_gamma=0.5, robust_lr_stages=4, checkpoint_every=2
)


def _generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    return Generator(TINY).eval()


class _InterruptedError(Exception):
    pass


def _stop_after(n: int) -> Any:
    """A stand-in for ``progress`` that stops the loop (as a killed process) after ``n`` iterations."""

    def fake(items: Iterable[int], **_: Any) -> Iterator[int]:
        for k, item in enumerate(items):
            if k == n:
                raise _InterruptedError
            yield item

    return fake


def test_paper_budget_is_the_default() -> None:
    cfg = KeyedGeneratorsConfig()
    assert (cfg.robust_steps, cfg.robust_batch_size, cfg.robust_lr) == (37_500, 16, 5e-4)
    assert (cfg.robust_betas, cfg.robust_lr_gamma, cfg.robust_lr_stages) == ((0.5, 0.99), 0.7, 10)
    with pytest.raises(ConfigError, match="robust_lr_gamma"):
        KeyedGeneratorsConfig(robust_lr_gamma=0.0)


def test_killed_robust_run_continues_to_the_same_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, start = _generator(0), _generator(1)
    key = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    whole, _, info = fine_tune_user(root, key, CFG, 0, start=start, robust=("noise",))

    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        patch.setattr(keyed, "progress", _stop_after(5))
        with pytest.raises(_InterruptedError):
            fine_tune_user(root, key, CFG, 0, start=start, robust=("noise",), state_dir=state)
    saved = read_json(state / "state.json")
    assert saved["step"] == 4
    # the lr saved after step index 3 is that of stage 1 (steps 2-3): 1e-2 * 0.5
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-3)

    resumed, _, resumed_info = fine_tune_user(root, key, CFG, 0, start=start, robust=("noise",), state_dir=state)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert resumed_info["loss"] == pytest.approx(info["loss"])
    assert not torch.equal(next(whole.parameters()), next(start.parameters()))


def test_state_of_another_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, start = _generator(0), _generator(1)
    key = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        patch.setattr(keyed, "progress", _stop_after(3))
        with pytest.raises(_InterruptedError):
            fine_tune_user(root, key, CFG, 0, start=start, robust=("noise",), state_dir=state)
    with pytest.raises(StoreMismatchError, match="another robust fine-tuning run"):
        fine_tune_user(root, key, CFG.replace(robust_lr=1e-3), 0, start=start, robust=("noise",), state_dir=state)
    with pytest.raises(ConfigError, match="only for a robust stage"):
        fine_tune_user(root, key, CFG, 0, start=start, state_dir=state)
