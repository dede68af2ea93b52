"""``genprov demo``: every capability end to end on the embedded default dataset (scikit-learn's digits).

The demo trains (or reuses from ``<out>/models``) a DCGAN, a DDPM and a classifier on digits, then runs
each registered demo section and writes one HTML report, ``<out>/index.html``, plus ``<out>/results.json``.

Sections are pluggable: a capability adds its story to the demo by registering a builder

    @DEMO_SECTIONS.register("flipad")
    def flipad_section(ctx: DemoContext) -> Section: ...

and naming it in :data:`DEMO_ORDER` (unlisted sections run after the listed ones, by name). A builder gets
the :class:`DemoContext`, whose ``dcgan()``, ``ddpm()`` and ``classifier()`` train once and are then cached
on disk, so a second ``genprov demo`` reuses every model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genprov.config import Config, require
from genprov.data import ImageDataset, load_dataset, resize_images
from genprov.eval.generation import FrechetDistance
from genprov.exceptions import ConfigError
from genprov.models.classifiers import ClassifierConfig, CNNClassifier
from genprov.models.diffusion import DDPMConfig
from genprov.models.gans import GANConfig
from genprov.models.sampling import sample
from genprov.models.training import TrainResult, default_train_config, train_classifier, train_ddpm, train_gan
from genprov.registry import Registry
from genprov.report import Figure, Image, KeyValue, Report, Section, Table, Text
from genprov.report.figures import make_grid, training_curves
from genprov.utils.io import atomic_write_json

__all__ = ["DEMO_ORDER", "DEMO_SECTIONS", "DemoConfig", "DemoContext", "grid_image", "run_demo"]

log = logging.getLogger(__name__)

SectionBuilder = Callable[["DemoContext"], Section]

#: Registered demo sections: name -> builder(ctx) -> Section.
DEMO_SECTIONS: Registry[Section] = Registry("demo section")

#: Display order of the demo's sections; sections not listed here follow, sorted by name.
DEMO_ORDER: tuple[str, ...] = ("data", "models", "flipad", "keyed", "trak", "t2i", "similarity", "privacy")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig(Config):
    """Settings of ``genprov demo``.

    Attributes:
        data: Dataset name or path (default: the embedded digits).
        image_size: Side of the images the DCGAN and the classifier work on (digits are resized from 8x8
            with ``genprov.data.resize_images``).
        ddpm_image_size: Side of the DDPM's images (smaller: a DDPM costs ~10x a GAN per step on a CPU). Its
            samples are resized to ``image_size`` by the same function as the real data before they are
            compared with it.
        seed: Seed of every model and every random choice.
        quick: Train for 1/20 of the steps and draw at most 128 samples (for smoke runs); the report says so.
        gan_steps: DCGAN generator updates.
        ddpm_steps: DDPM training steps.
        ddpm_preset: DDPM size (see ``DDPMConfig.preset``).
        classifier_steps: Classifier training steps (the classifier is the Fréchet-distance feature space).
        n_samples: Samples drawn per generator for grids and quality figures.
        sections: Sections to run (empty: all registered); ``data`` always runs.
    """

    data: str = "digits"
    image_size: int = 16
    ddpm_image_size: int = 8
    seed: int = 0
    quick: bool = False
    gan_steps: int = 2000
    ddpm_steps: int = 3000
    ddpm_preset: str = "small"
    classifier_steps: int = 1000
    n_samples: int = 500
    sections: tuple[str, ...] = ()

    def validate(self) -> None:
        for name in ("image_size", "ddpm_image_size"):
            value = getattr(self, name)
            require(value in (8, 16, 28, 32), name, "one of 8, 16, 28, 32", value)
        for name in ("gan_steps", "ddpm_steps", "classifier_steps", "n_samples"):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, name, "a positive integer", value)

    def steps(self, name: str) -> int:
        """Training steps for ``name`` in {"gan", "ddpm", "classifier"}, divided by 20 when ``quick``."""
        full = int(getattr(self, f"{name}_steps"))
        return max(20, full // 20) if self.quick else full

    @property
    def n_draws(self) -> int:
        """Samples drawn per generator: ``n_samples``, at most 128 when ``quick``."""
        return min(self.n_samples, 128) if self.quick else self.n_samples


_TRAINERS: dict[str, tuple[Callable[..., TrainResult], str]] = {
    "dcgan": (train_gan, "gan"),
    "lsgan": (train_gan, "gan"),
    "ddpm": (train_ddpm, "ddpm"),
    "classifier": (train_classifier, "classifier"),
}


class DemoContext:
    """What a demo section gets: the config, data, output folder and cached trained models.

    Attributes:
        config: The demo's config.
        out: The report folder; ``out/models`` caches checkpoints, ``out/workspace`` is for the service.
        train: Training split (N, C, H, W) in [-1, 1].
        test: Held-out split.
        results: Metrics per section, written to ``results.json``.
        servable: What ``genprov serve`` can answer with, recorded by the sections for ``genprov demo`` to
            register in ``out/workspace``: ``{"name", "kind", ...paths}`` dicts (see ``genprov.app.register``).
        show_progress: Whether long steps draw progress bars.
    """

    def __init__(self, config: DemoConfig, out: Path, *, data_root: str | Path | None, show_progress: bool | None):
        self.config = config
        self.out = out
        self.show_progress = show_progress
        self.data_root = data_root
        self._data: dict[tuple[str, int], ImageDataset] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.servable: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self._models: dict[str, TrainResult] = {}
        self._samples: dict[str, torch.Tensor] = {}

    def dataset(self, split: str, size: int) -> ImageDataset:
        """The demo data's ``split`` ("train" or "test") at ``size`` x ``size`` (loaded once)."""
        key = (split, size)
        if key not in self._data:
            self._data[key] = load_dataset(self.config.data, split=split, data_root=self.data_root, resize=size)
        return self._data[key]

    @property
    def train(self) -> ImageDataset:
        """Training split at ``config.image_size``."""
        return self.dataset("train", self.config.image_size)

    @property
    def test(self) -> ImageDataset:
        """Test split at ``config.image_size``."""
        return self.dataset("test", self.config.image_size)

    def image_size(self, model: str) -> int:
        """Side of the images ``model`` works on."""
        return self.config.ddpm_image_size if model == "ddpm" else self.config.image_size

    @property
    def models_dir(self) -> Path:
        """Folder of the cached checkpoints."""
        return self.out / "models"

    def _model_config(self, name: str) -> Config:
        cfg, size, channels = self.config, self.image_size(name), self.train.n_channels
        if name in ("dcgan", "lsgan"):
            return GANConfig(arch=name, image_size=size, channels=channels)
        if name == "ddpm":
            return DDPMConfig.preset(cfg.ddpm_preset, image_size=size, channels=channels)
        if self.train.labels is None:
            raise ConfigError(f"The demo's classifier needs labelled data; {self.train.name!r} has no labels.")
        return ClassifierConfig(image_size=size, channels=channels, n_classes=int(self.train.labels.max()) + 1)

    def model(self, name: str) -> TrainResult:
        """The demo's ``name`` model in {"dcgan", "lsgan", "ddpm", "classifier"}: trained on first use, then cached.

        The LSGAN is the "other generator" of the model-attribution sections.
        """
        if name not in self._models:
            trainer, steps = _TRAINERS[name]
            model_cfg = self._model_config(name)
            train_cfg = default_train_config(model_cfg, n_steps=self.config.steps(steps), seed=self.config.seed)
            start = time.perf_counter()
            data = self.dataset("train", self.image_size(name))
            result = trainer(model_cfg, train_cfg, data, self.models_dir / name, show_progress=self.show_progress)
            self.timings[f"train {name}"] = time.perf_counter() - start
            log.info("%s: %d steps (resumed from %d) in %.1fs", name, result.step, result.resumed_from, result.seconds)
            self._models[name] = result
        return self._models[name]

    def dcgan(self) -> TrainResult:
        """The demo's DCGAN."""
        return self.model("dcgan")

    def ddpm(self) -> TrainResult:
        """The demo's DDPM."""
        return self.model("ddpm")

    def classifier(self) -> TrainResult:
        """The demo's classifier (the feature space of the Fréchet distance)."""
        return self.model("classifier")

    def samples(self, model: str) -> torch.Tensor:
        """``config.n_samples`` samples of ``model`` in {"dcgan", "ddpm"} at the model's own size (seeded, once)."""
        if model not in self._samples:
            start = time.perf_counter()
            self._samples[model] = sample(
                self.model(model).model, self.config.n_draws, seed=self.config.seed, show_progress=self.show_progress
            )
            self.timings[f"sample {model}"] = time.perf_counter() - start
        return self._samples[model]


def grid_image(images: torch.Tensor, caption: str, *, nrow: int = 16, width_px: int = 640) -> Image:
    """A report image of ``images`` (n, C, H, W) in a grid, upscaled (nearest) to about ``width_px`` wide."""
    grid = make_grid(images, nrow=nrow)
    return Image(grid, caption=caption, scale=max(1, width_px // grid.shape[-1]))


def _accuracy(classifier: nn.Module, data: ImageDataset) -> float:
    with torch.no_grad():
        logits = torch.cat([classifier(x) for x in data.images.split(256)])
    assert data.labels is not None  # the demo's classifier section only runs on labelled data
    return float((logits.argmax(1) == data.labels).float().mean())


@DEMO_SECTIONS.register("data")
def data_section(ctx: DemoContext) -> Section:
    """The dataset: counts and a grid of real images."""
    train, test = ctx.train, ctx.test
    facts = {
        "dataset": train.name,
        "training images": len(train),
        "test images": len(test),
        "image size": f"{train.image_size}x{train.image_size}x{train.n_channels}",
        "classes": len(train.class_names) if train.class_names else "unlabelled",
    }
    ctx.results["data"] = facts
    return Section(
        "data",
        "The data",
        intro="Every model in this demo is trained on the training split; the test split is held out for "
        "quality figures and for the attribution checks of later sections.",
    ).add(KeyValue(facts), grid_image(train.images[:64], "The first 64 training images."))


@DEMO_SECTIONS.register("models")
def models_section(ctx: DemoContext) -> Section:
    """The model zoo on the demo data: samples, training curves, Fréchet distances."""
    cfg = ctx.config
    clf = ctx.classifier()
    assert isinstance(clf.model, CNNClassifier)
    fd = FrechetDistance(clf.model.features, batch_size=256)
    fd.reference(ctx.test.images)
    n = min(cfg.n_draws, len(ctx.train))
    rows = [
        {
            "samples": f"real training images (n={n}, reference floor)",
            "Fréchet distance": fd.score(ctx.train.images[:n]),
        }
    ]
    section = Section(
        "models",
        "Generators and a classifier",
        intro=f"A DCGAN, a DDPM and a CNN classifier trained on {ctx.train.name} "
        f"({cfg.image_size}x{cfg.image_size}), cached in `models/` and reused on the next run. Sample quality is "
        "the Fréchet distance to the test images in the feature space of the classifier (its penultimate "
        "layer), the default feature space of genprov.eval.generation; lower is better. The DDPM works on "
        f"{cfg.ddpm_image_size}x{cfg.ddpm_image_size} images; its samples are resized like the real data "
        "before they are compared.",
    )
    if cfg.quick:
        section.add(Text("Quick mode: every model trained for 1/20 of its steps, so samples are rough.", tone="note"))
    for name, result in (("dcgan", ctx.dcgan()), ("ddpm", ctx.ddpm())):
        x = ctx.samples(name)
        rows.append({"samples": f"{name} (n={len(x)})", "Fréchet distance": fd.score(resize_images(x, cfg.image_size))})
        section.add(
            grid_image(x[:64], f"{name}: 64 samples (seed {cfg.seed})."),
            Figure(training_curves(result.log, _loss_keys(result.log)), caption=f"{name}: training losses."),
        )
    accuracy = _accuracy(clf.model, ctx.test)
    section.add(
        Table(
            rows,
            caption="Sample quality (Fréchet distance in classifier features; lower is better).",
            highlight={"Fréchet distance": "min"},
        ),
        KeyValue({"classifier test accuracy": accuracy}),
        Figure(training_curves(clf.log, _loss_keys(clf.log)), caption="classifier: training curves."),
    )
    ctx.results["models"] = {
        "frechet_distance": {r["samples"]: r["Fréchet distance"] for r in rows},
        "classifier_test_accuracy": accuracy,
        "checkpoints": {name: str(ctx.model(name).checkpoint) for name in ("dcgan", "ddpm", "classifier")},
    }
    return section


def _loss_keys(log_entries: Sequence[dict[str, float]]) -> list[str]:
    keys = {k for entry in log_entries for k in entry}
    return sorted(k for k in keys if k not in ("step", "time", "seconds", "lr"))


def _ordered(names: Sequence[str]) -> list[str]:
    listed = [n for n in DEMO_ORDER if n in names]
    return listed + sorted(n for n in names if n not in DEMO_ORDER)


def run_demo(
    config: DemoConfig,
    out: str | Path,
    *,
    data_root: str | Path | None = None,
    show_progress: bool | None = None,
) -> dict[str, Any]:
    """Run the demo and write ``out/index.html`` and ``out/results.json``.

    Args:
        config: What to run.
        out: Report folder (created; checkpoints are cached in ``out/models``).
        data_root: Folder of dataset files when ``config.data`` is not built in.
        show_progress: Progress bars (default: on for a terminal).

    Returns:
        The ``results.json`` content: per-section metrics, timings, and the report's path.
    """
    out = Path(out)
    unknown = [s for s in config.sections if s not in DEMO_SECTIONS]
    if unknown:
        DEMO_SECTIONS.entry(unknown[0])  # raises ConfigError with a suggestion
    wanted = set(config.sections) | {"data"} if config.sections else set(DEMO_SECTIONS.names())
    ctx = DemoContext(config, out, data_root=data_root, show_progress=show_progress)
    report = Report(
        "genprov demo",
        subtitle="Which model made this sample? Which training data is it from? What do its explanations leak?",
        meta={"dataset": ctx.train.name, "seed": config.seed, "quick": config.quick},
    )
    start = time.perf_counter()
    for name in _ordered(sorted(wanted)):
        t0 = time.perf_counter()
        log.info("demo section %s", name)
        section = DEMO_SECTIONS.entry(name).factory(ctx)
        if not isinstance(section, Section):
            raise ConfigError(f"demo section {name!r} must return a report Section; got {type(section).__name__}.")
        report.add(section)
        ctx.results.setdefault(name, section.to_dict())
        ctx.timings[f"section {name}"] = time.perf_counter() - t0
    ctx.timings["total"] = time.perf_counter() - start
    index = report.write(out)
    results = {
        "config": config.to_dict(),
        "sections": ctx.results,
        "timings_seconds": {k: round(v, 2) for k, v in ctx.timings.items()},
        "report": str(index),
        "servable": ctx.servable,
    }
    atomic_write_json(out / "results.json", results)
    return results
