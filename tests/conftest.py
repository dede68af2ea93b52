"""Shared test set-up: single-threaded torch, no progress bars, and the shared data root."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("GENPROV_PROGRESS", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (../shared/data); tests that need it skip when it is absent."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}; these tests need the project's ../shared/data folder")
    return SHARED_DATA


def build_tiny_workspace(folder: Path) -> Path:
    """A workspace with one entry of each servable kind, built from tiny models in seconds.

    Entries: ``gan`` (FLIPAD detector of an 8x8 DCGAN), ``family`` (2 keyed user models of that GAN),
    ``dtrak`` (D-TRAK store of a tiny 8x8 DDPM over 40 digits), ``sim`` (raw-pixel similarity index over the same
    40 digits); examples: two digits.
    """
    from genprov.app.register import add_flipad, add_keyed, add_similarity, add_trak
    from genprov.app.workspace import Workspace
    from genprov.attribution.data import TRAKAttributor, TRAKConfig
    from genprov.attribution.data.index_folder import build_similarity_index
    from genprov.attribution.model import (
        FinalLayerInversionAttributor,
        FinalLayerInversionAttributorConfig,
        KeyedGenerators,
        KeyedGeneratorsConfig,
    )
    from genprov.data import load_dataset, png_roundtrip, save_images
    from genprov.models.diffusion import DDPMConfig
    from genprov.models.gans import GANConfig
    from genprov.models.sampling import sample
    from genprov.models.training import default_train_config, train_ddpm, train_gan

    runs = folder / "runs"
    digits = load_dataset("digits", n=200)
    gan_cfg = GANConfig(arch="dcgan", image_size=8, width=4, latent_dim=8)
    gan = train_gan(gan_cfg, default_train_config(gan_cfg, n_steps=20, batch_size=32), digits, runs / "gan")
    flipad = FinalLayerInversionAttributor(
        gan.model,
        FinalLayerInversionAttributorConfig.from_dict({"max_iter": 20, "detector": {"n_epochs": 2, "widths": [8]}}),
    )
    flipad.fit(png_roundtrip(sample(gan.model, 60, seed=1)), negatives=digits.images[:60])
    flipad.save_pretrained(runs / "detector")
    family_cfg = KeyedGeneratorsConfig(user_steps=5, key_steps=5, n_real=64, batch_size=8, n_compliance=64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 5 training steps do not make data-compliant keys
        KeyedGenerators.create(gan.model, 2, family_cfg, out=runs / "family", real=digits.images[:64])
    ddpm_cfg = DDPMConfig.preset("tiny", image_size=8, channels=1)
    ddpm = train_ddpm(ddpm_cfg, default_train_config(ddpm_cfg, n_steps=2, batch_size=8), digits, runs / "ddpm")
    spec = {"name": "digits", "split": "train", "n": 40, "seed": 0, "resize": 8, "data_root": None}
    config = TRAKConfig(output_function="squared-l2-norm", proj_dim=64, n_timesteps=2)
    attributor = TRAKAttributor(ddpm.model, config=config).fit(load_dataset(**spec), store=runs / "store")
    assert attributor.store_ is not None
    attributor.store_.update_info(
        model=str(runs / "ddpm"), data=spec, trak_config=config.to_dict(), image_size=8, channels=1
    )
    ws_dir = folder / "workspace"
    ws = Workspace.create(ws_dir)
    add_flipad(ws, "gan", runs / "detector", generator=runs / "gan")
    add_keyed(ws, "family", runs / "family")
    add_trak(ws, "dtrak", runs / "store")
    build_similarity_index("pixels", runs / "sim", spec)
    add_similarity(ws, "sim", runs / "sim")
    examples = save_images(load_dataset("digits", split="test", n=2).images, ws_dir / "examples", prefix="digit")
    assert len(examples) == 2
    return ws_dir


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ready workspace (see :func:`build_tiny_workspace`); tests that change it copy it first."""
    return build_tiny_workspace(tmp_path_factory.mktemp("tiny-workspace"))


def _file_mtimes(folder: Path, pattern: str = "*") -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob(pattern)) if p.is_file()}


@pytest.fixture
def file_mtimes() -> Callable[..., dict[str, int]]:
    """``file_mtimes(folder, pattern="*")``: ``{relative path: mtime_ns}`` of the matching files under ``folder``.

    Checks that a re-run reused its cache (nothing rewritten) without timing anything.
    """
    return _file_mtimes


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray of 2 CPUs without dashboard, for one test module (``pytestmark = [pytest.mark.ray,
    pytest.mark.usefixtures("ray_cluster")]``); Ray is part of the dev extra, so these tests run rather than skip."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()
