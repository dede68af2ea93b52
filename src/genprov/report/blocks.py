"""The content blocks of a report section.

A block is a small dataclass holding what to show; when the report is rendered each block turns into a
template context (its images become PNG files or inline data through an asset sink) and the template
draws it. Blocks:

- :class:`Text`: a paragraph of markdown (raw HTML is escaped, never passed through) or plain text.
- :class:`Table`: rows of dicts, with number formatting and the best value per column highlighted.
- :class:`KeyValue`: headline metrics as cards.
- :class:`Image`: one image (tensor, PNG bytes or file), e.g. a grid of samples.
- :class:`Figure`: a matplotlib figure (see :mod:`genprov.report.figures`).
- :class:`Gallery`: a query image beside rows of top-k images with captions and scores ("top
  influencers": the most positive and most negative training examples).
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeAlias

import numpy as np
import torch
from markdown_it import MarkdownIt
from markupsafe import Markup, escape
from matplotlib.figure import Figure as MplFigure
from torch import Tensor

from genprov.eval.stats import MeanCI
from genprov.exceptions import ConfigError, DataError
from genprov.report.figures import figure_to_png_bytes, to_png_bytes

__all__ = [
    "INFLUENCE_LABELS",
    "Block",
    "Figure",
    "Gallery",
    "GalleryItem",
    "GalleryRow",
    "Image",
    "ImageSource",
    "KeyValue",
    "Table",
    "Text",
    "format_value",
    "render_markdown",
]

#: Row labels of an influence gallery: the most positive and the most negative training examples.
INFLUENCE_LABELS = ("Most positive (proponents)", "Most negative (opponents)")

ImageSource: TypeAlias = "Tensor | np.ndarray | bytes | str | Path"
"""An image: a (C, H, W) or (H, W) tensor/array in [-1, 1], PNG bytes, or the path of a PNG file."""

Tone = Literal["positive", "negative", "neutral"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


class AssetSink(Protocol):
    """Where rendered images go: files under the report folder, or inline ``data:`` URIs."""

    def add(self, name: str, png: bytes) -> str:
        """Store ``png`` under the base name ``name`` (no extension) and return the ``src`` to use."""
        ...


class InlineAssets:
    """Asset sink that embeds every image as a base64 ``data:`` URI (a single self-contained file)."""

    def add(self, name: str, png: bytes) -> str:
        """Return ``png`` as a ``data:image/png;base64,...`` URI (``name`` is unused)."""
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class FolderAssets:
    """Asset sink that collects images as ``<folder>/<name>.png`` files to be written next to the HTML."""

    def __init__(self, folder: str = "figures") -> None:
        self.folder = folder
        self.files: dict[str, bytes] = {}

    def add(self, name: str, png: bytes) -> str:
        """Record ``png`` as ``<folder>/<name>.png`` (a suffix keeps names unique) and return that path."""
        filename, n = f"{name}.png", 1
        while filename in self.files:
            n += 1
            filename = f"{name}-{n}.png"
        self.files[filename] = png
        return f"{self.folder}/{filename}"


def format_value(value: Any, spec: str = ".3f") -> str:
    """Display text of a table cell or metric.

    Floats use ``spec`` (NaN shows as "n/a", infinities as "∞"); :class:`MeanCI` shows
    ``"mean [low, high]"``; ints are shown in full; ``None`` as an em dash; bools as yes / no.
    """
    if value is None:
        return "—"
    if isinstance(value, MeanCI):
        return value.format(spec)
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return format(value, spec)
    return str(value)


def _numeric(value: Any) -> float | None:
    """The number a cell is ranked by for highlighting, or ``None`` if it is not a finite number."""
    if isinstance(value, MeanCI):
        return value.mean
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _json_value(value: Any) -> Any:
    """A JSON-safe version of a cell value (NaN / inf become ``None``)."""
    if isinstance(value, MeanCI):
        return value.to_dict()
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value.tolist()] if value.ndim else _json_value(value.item())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return str(value)


def _png_from_source(source: object, name: str, scale: int | None) -> bytes:
    """PNG bytes of an :data:`ImageSource`; tensors are upscaled by ``scale`` (or to about 128-512 px)."""
    if isinstance(source, (bytes, bytearray)):
        if not bytes(source).startswith(_PNG_SIGNATURE):
            raise DataError(f"{name}: bytes must be a PNG file (they do not start with the PNG signature).")
        return bytes(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{name}: image file {path} does not exist.")
        data = path.read_bytes()
        if not data.startswith(_PNG_SIGNATURE):
            raise DataError(f"{name}: {path} is not a PNG file; convert it to PNG first.")
        return data
    if isinstance(source, (Tensor, np.ndarray)):
        side = max(int(source.shape[-1]), int(source.shape[-2])) if source.ndim >= 2 else 1
        factor = scale if scale is not None else max(1, min(16, 512 // max(side, 1)))
        return to_png_bytes(source, scale=factor)
    raise DataError(f"{name} must be a tensor (C, H, W), PNG bytes or a PNG file path; got {type(source).__name__}.")


def render_markdown(text: str) -> Markup:
    """Render markdown with raw HTML disabled (it is shown escaped) and unsafe link schemes refused."""
    return Markup(_MARKDOWN.render(text))  # safe: markdown-it escapes raw HTML when html=False


def _plain(text: str) -> Markup:
    """Escape plain text; blank lines separate paragraphs, single newlines become line breaks."""
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    return Markup("").join(
        Markup("<p>{}</p>").format(Markup("<br>").join(escape(line) for line in p.split("\n"))) for p in paragraphs
    )


class Block:
    """Base class of report blocks: ``kind`` names the template macro that draws it."""

    kind: ClassVar[str]

    def context(self, assets: AssetSink, key: str) -> dict[str, Any]:
        """Template context of this block; images go to ``assets`` under names starting with ``key``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary of the block (images are described by their captions only)."""
        raise NotImplementedError


@dataclasses.dataclass
class Text(Block):
    """A paragraph of text.

    Attributes:
        text: Markdown (``**bold**``, ``*italic*``, ```code```, ``[links](https://...)``, lists) or plain
            text; HTML in it is always escaped.
        markdown: Render ``text`` as markdown; ``False`` escapes it as plain text.
        tone: ``"plain"``, or ``"note"`` / ``"warning"`` for a highlighted call-out box.
    """

    kind: ClassVar[str] = "text"

    text: str
    markdown: bool = True
    tone: Literal["plain", "note", "warning"] = "plain"

    def context(self, assets: AssetSink, key: str) -> dict[str, Any]:
        """Template context: the rendered, escaped HTML."""
        if self.tone not in ("plain", "note", "warning"):
            raise ConfigError(f"Text tone must be 'plain', 'note' or 'warning'; got {self.tone!r}.")
        html = render_markdown(self.text) if self.markdown else _plain(self.text)
        return {"kind": self.kind, "html": html, "tone": self.tone}

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "text", "text": ...}``."""
        return {"type": self.kind, "text": self.text}


@dataclasses.dataclass
class Table(Block):
    """A table of rows (dicts), one column per key.

    Attributes:
        rows: One dict per row; missing keys show as an em dash.
        caption: Shown above the table.
        columns: Column order; default: keys in order of first appearance.
        float_format: Format spec for floats, for all columns or per column (``{"auc": ".4f"}``; others
            use ``".3f"``).
        highlight: ``{column: "max" | "min"}``: the best numeric value(s) of those columns are bold.
    """

    kind: ClassVar[str] = "table"

    rows: Sequence[Mapping[str, Any]]
    caption: str = ""
    columns: Sequence[str] | None = None
    float_format: str | Mapping[str, str] = ".3f"
    highlight: Mapping[str, Literal["max", "min"]] = dataclasses.field(default_factory=dict)

    def column_names(self) -> list[str]:
        """The columns shown, in order."""
        if self.columns is not None:
            return list(self.columns)
        names: dict[str, None] = {}
        for row in self.rows:
            names.update(dict.fromkeys(row))
        return list(names)

    def _spec(self, column: str) -> str:
        if isinstance(self.float_format, str):
            return self.float_format
        return self.float_format.get(column, ".3f")

    def context(self, assets: AssetSink, key: str) -> dict[str, Any]:
        """Template context: header cells and formatted body cells with alignment and highlight flags."""
        columns = self.column_names()
        for column, mode in self.highlight.items():
            if column not in columns:
                raise ConfigError(f"Table highlight names column {column!r}, which is not among {columns}.")
            if mode not in ("max", "min"):
                raise ConfigError(f"Table highlight for {column!r} must be 'max' or 'min'; got {mode!r}.")
        best: dict[str, float] = {}
        for column, mode in self.highlight.items():
            numbers = [v for row in self.rows if (v := _numeric(row.get(column))) is not None]
            if numbers:
                best[column] = max(numbers) if mode == "max" else min(numbers)
        numeric_cols = {c for c in columns if any(_numeric(row.get(c)) is not None for row in self.rows)} | set(best)
        body = []
        for row in self.rows:
            cells = []
            for column in columns:
                value = row.get(column)
                number = _numeric(value)
                cells.append(
                    {
                        "text": format_value(value, self._spec(column)),
                        "numeric": column in numeric_cols,
                        "best": column in best and number is not None and number == best[column],
                    }
                )
            body.append(cells)
        header = [{"name": c, "numeric": c in numeric_cols, "mode": self.highlight.get(c)} for c in columns]
        return {"kind": self.kind, "caption": self.caption, "columns": header, "rows": body}

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "table", "caption", "columns", "rows"}`` with JSON-safe values."""
        columns = self.column_names()
        rows = [{c: _json_value(row.get(c)) for c in columns} for row in self.rows]
        return {"type": self.kind, "caption": self.caption, "columns": columns, "rows": rows}


@dataclasses.dataclass
class KeyValue(Block):
    """Headline metrics shown as cards.

    Attributes:
        items: ``{label: value}``; floats use ``float_format``, :class:`MeanCI` shows its interval.
        caption: Optional line above the cards.
        notes: ``{label: small print}`` under a card's value, e.g. ``{"AUC": "higher is better"}``.
        float_format: Format spec for floats.
    """

    kind: ClassVar[str] = "key_value"

    items: Mapping[str, Any]
    caption: str = ""
    notes: Mapping[str, str] = dataclasses.field(default_factory=dict)
    float_format: str = ".3f"

    def context(self, assets: AssetSink, key: str) -> dict[str, Any]:
        """Template context: one card per item."""
        unknown = [label for label in self.notes if label not in self.items]
        if unknown:
            raise ConfigError(f"KeyValue notes name labels {unknown} that are not among the items {list(self.items)}.")
        cards = []
        for label, value in self.items.items():
            if isinstance(value, MeanCI):
                main, detail = (
                    format_value(value.mean, self.float_format),
                    (f"{value.confidence:.0%} CI [{value.low:{self.float_format}}, {value.high:{self.float_format}}]"),
                )
            else:
                main, detail = format_value(value, self.float_format), ""
            cards.append({"label": label, "value": main, "detail": detail, "note": self.notes.get(label, "")})
        return {"kind": self.kind, "caption": self.caption, "cards": cards}

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "key_value", "items": {label: value}}`` with JSON-safe values."""
        return {"type": self.kind, "caption": self.caption, "items": {k: _json_value(v) for k, v in self.items.items()}}


@dataclasses.dataclass
class Image(Block):
    """One image with a caption.

    Attributes:
        source: A (C, H, W) / (H, W) tensor or array in [-1, 1] (e.g. from
            :func:`~genprov.report.figures.make_grid`), PNG bytes, or a PNG file path.
        caption: Shown under the image.
        scale: Nearest-neighbour upscaling of tensors; default: up to about 512 px on the long side.
        width: Display width in CSS pixels; default: the PNG's own width, capped at the column width.
        pixelated: Draw with hard pixel edges when the browser scales it (right for small images).
    """

    kind: ClassVar[str] = "image"

    source: ImageSource
    caption: str = ""
    scale: int | None = None
    width: int | None = None
    pixelated: bool = True

    def context(self, assets: AssetSink, key: str) -> dict[str, Any]:
        """Template context: the image's ``src``."""
        src = assets.add(key, _png_from_source(self.source, "Image.source", self.scale))
        return {
            "kind": self.kind,
            "src": src,
            "caption": self.caption,
            "width": self.width,
            "pixelated": self.pixelated,
        }

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "image", "caption": ...}``."""
        return {"type": self.kind, "caption": self.caption}


@dataclasses.dataclass
class Figure(Block):
    """A matplotlib figure, rendered to PNG when the block is made; the block then closes the figure.

    Attributes:
        figure: The figure, e.g. from :mod:`genprov.report.figures`.
        caption: Shown under the figure.
        dpi: Resolution of the PNG (shown at 96 CSS px per inch, so 150 is sharp on high-DPI screens).
    """

    kind: ClassVar[str] = "figure"

    figure: MplFigure = dataclasses.field(repr=False)
    caption: str = ""
    dpi: int = 150
    _png: bytes = dataclasses.field(init=False, repr=False)
    _width_px: int = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.figure, MplFigure):
            raise DataError(
                f"Figure.figure must be a matplotlib Figure; got {type(self.figure).__name__}. "
                "For images use Image(...)."
            )
        self._width_px = round(float(self.figure.get_figwidth()) * 96)
        self._png = figure_to_png_bytes(self.figure, dpi=self.dpi, close=True)

    def context(self, assets: AssetSink, key: str) -> dict[str, Any]:
        """Template context: the rendered PNG's ``src`` and display width."""
        return {"kind": self.kind, "src": assets.add(key, self._png), "caption": self.caption, "width": self._width_px}

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "figure", "caption": ...}``."""
        return {"type": self.kind, "caption": self.caption}


@dataclasses.dataclass
class GalleryItem:
    """One thumbnail of a gallery row.

    Attributes:
        image: The image (see :data:`ImageSource`).
        caption: Short label, e.g. ``"#1234"`` (a training index) or a class name.
        score: Optional score shown under the caption.
    """

    image: ImageSource
    caption: str = ""
    score: float | None = None


@dataclasses.dataclass
class GalleryRow:
    """A labelled row of thumbnails, e.g. the top-k most positive training examples.

    Attributes:
        label: Row heading, e.g. ``"Most positive"``.
        items: Thumbnails, left to right.
        tone: ``"positive"`` (green accent), ``"negative"`` (red) or ``"neutral"``.
    """

    label: str
    items: Sequence[GalleryItem]
    tone: Tone = "neutral"

    @classmethod
    def from_tensors(
        cls,
        label: str,
        images: Tensor,
        *,
        scores: Sequence[float] | Tensor | np.ndarray | None = None,
        captions: Sequence[str] | None = None,
        tone: Tone = "neutral",
    ) -> GalleryRow:
        """A row from a batch (k, C, H, W) with optional per-image scores and captions."""
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise DataError(f"GalleryRow images must be a tensor (k, C, H, W); got {shape}.")
        k = images.shape[0]
        score_list = _float_list(scores, k, "scores") if scores is not None else [None] * k
        caption_list = list(captions) if captions is not None else [""] * k
        if len(caption_list) != k:
            raise DataError(f"GalleryRow captions must have one entry per image ({k}); got {len(caption_list)}.")
        items = [GalleryItem(images[i], caption_list[i], score_list[i]) for i in range(k)]
        return cls(label, items, tone)


def _float_list(values: Sequence[float] | Tensor | np.ndarray, k: int, name: str) -> list[float | None]:
    arr = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).reshape(-1)
    if arr.size != k:
        raise DataError(f"{name} must have one entry per image ({k}); got {arr.size}.")
    return [float(v) for v in arr]


@dataclasses.dataclass
class Gallery(Block):
    """A query image beside rows of thumbnails with captions and scores ("top influencers").

    Attributes:
        rows: Rows of thumbnails, e.g. most positive then most negative training examples.
        query: Optional image shown on the left (the generated sample being explained).
        query_caption: Label under the query image.
        caption: Shown under the gallery.
        thumb_px: Display size of each thumbnail in CSS pixels (images are upscaled nearest-neighbour).
        score_format: Format spec for scores.
    """

    kind: ClassVar[str] = "gallery"

    rows: Sequence[GalleryRow]
    query: ImageSource | None = None
    query_caption: str = "query"
    caption: str = ""
    thumb_px: int = 72
    score_format: str = ".3g"

    @classmethod
    def top_k(
        cls,
        query: ImageSource | None,
        train_images: Tensor,
        indices: Sequence[int] | Tensor | np.ndarray,
        scores: Sequence[float] | Tensor | np.ndarray,
        *,
        negative_indices: Sequence[int] | Tensor | np.ndarray | None = None,
        negative_scores: Sequence[float] | Tensor | np.ndarray | None = None,
        caption: str = "",
        positive_label: str = "Most positive",
        negative_label: str = "Most negative",
        query_caption: str = "query",
    ) -> Gallery:
        """Gallery of one query's top training examples, e.g. from one row of a ``DataAttributionResult``.

        Args:
            query: The query image (C, H, W), or ``None``.
            train_images: (n_train, C, H, W) the training set the indices point into.
            indices: (k,) training indices, most influential first.
            scores: (k,) their scores.
            negative_indices: Optional (k',) indices of the most negative examples.
            negative_scores: Their scores (required with ``negative_indices``).
            caption: Shown under the gallery.
            positive_label: Heading of the first row.
            negative_label: Heading of the second row.
            query_caption: Label under the query image.
        """
        rows = [_indexed_row(positive_label, train_images, indices, scores, "positive")]
        if negative_indices is not None:
            if negative_scores is None:
                raise DataError("Gallery.top_k: negative_scores are required with negative_indices.")
            rows.append(_indexed_row(negative_label, train_images, negative_indices, negative_scores, "negative"))
        return cls(rows, query=query, query_caption=query_caption, caption=caption)

    @classmethod
    def influence(
        cls,
        query: ImageSource | None,
        train_images: Tensor,
        scores: Tensor | np.ndarray,
        *,
        k_positive: int = 5,
        k_negative: int = 3,
        caption: str = "",
        query_caption: str = "query",
    ) -> Gallery:
        """A query beside its ``k_positive`` most positive and ``k_negative`` most negative training examples.

        Args:
            query: (C, H, W) the query image, or ``None``.
            train_images: (n_train, C, H, W) the training set.
            scores: (n_train,) the query's scores over the whole training set; higher = more positive
                influence (ties keep the lower index first).
            k_positive: Examples in the first row.
            k_negative: Examples in the second row (0: none).
            caption: Shown under the gallery.
            query_caption: Label under the query image.
        """
        s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
        order = torch.sort(s, descending=True, stable=True).indices
        pos = order[: min(k_positive, len(s))]
        neg = order.flip(0)[: min(k_negative, len(s))] if k_negative else None
        return cls.top_k(
            query,
            train_images,
            pos,
            s[pos],
            negative_indices=neg,
            negative_scores=s[neg] if neg is not None else None,
            caption=caption,
            query_caption=query_caption,
            positive_label=INFLUENCE_LABELS[0],
            negative_label=INFLUENCE_LABELS[1],
        )

    def context(self, assets: AssetSink, key: str) -> dict[str, Any]:
        """Template context: the query's and every thumbnail's ``src`` with formatted captions."""
        if isinstance(self.thumb_px, bool) or not isinstance(self.thumb_px, int) or self.thumb_px < 8:
            raise ConfigError(f"Gallery thumb_px must be an integer >= 8; got {self.thumb_px!r}.")
        query_src = None
        if self.query is not None:
            query_src = assets.add(f"{key}-query", self._png(self.query, "Gallery.query", 2))
        rows = []
        for r, row in enumerate(self.rows):
            if row.tone not in ("positive", "negative", "neutral"):
                raise ConfigError(f"GalleryRow tone must be 'positive', 'negative' or 'neutral'; got {row.tone!r}.")
            items = []
            for j, item in enumerate(row.items):
                src = assets.add(f"{key}-r{r + 1}-{j + 1}", self._png(item.image, f"Gallery row {r + 1} item {j + 1}"))
                score = None if item.score is None else format_value(float(item.score), self.score_format)
                items.append({"src": src, "caption": item.caption, "score": score})
            rows.append({"label": row.label, "tone": row.tone, "thumbs": items})
        return {
            "kind": self.kind,
            "query": query_src,
            "query_caption": self.query_caption,
            "rows": rows,
            "caption": self.caption,
            "thumb_px": self.thumb_px,
            "query_px": 2 * self.thumb_px,
        }

    def _png(self, source: ImageSource, name: str, factor: int = 1) -> bytes:
        if isinstance(source, (Tensor, np.ndarray)) and source.ndim >= 2:
            side = max(int(source.shape[-1]), 1)
            return _png_from_source(source, name, max(1, math.ceil(factor * self.thumb_px / side)))
        return _png_from_source(source, name, None)

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "gallery", "caption", "rows": [{"label", "items": [{"caption", "score"}]}]}``."""
        rows = [
            {"label": row.label, "items": [{"caption": it.caption, "score": _json_value(it.score)} for it in row.items]}
            for row in self.rows
        ]
        return {"type": self.kind, "caption": self.caption, "query_caption": self.query_caption, "rows": rows}


def _indexed_row(
    label: str,
    train_images: Tensor,
    indices: Sequence[int] | Tensor | np.ndarray,
    scores: Sequence[float] | Tensor | np.ndarray,
    tone: Tone,
) -> GalleryRow:
    if not isinstance(train_images, Tensor) or train_images.ndim != 4:
        shape = tuple(train_images.shape) if isinstance(train_images, Tensor) else type(train_images).__name__
        raise DataError(f"train_images must be a tensor (n_train, C, H, W); got {shape}.")
    idx = np.asarray(indices.detach().cpu() if isinstance(indices, Tensor) else indices).reshape(-1)
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= len(train_images)):
        raise DataError(f"indices must be integers in [0, {len(train_images)}); got {idx.tolist()}.")
    picked = train_images[torch.as_tensor(idx, dtype=torch.long)]
    return GalleryRow.from_tensors(label, picked, scores=scores, captions=[f"#{i}" for i in idx.tolist()], tone=tone)
