"""Reports: every block type written to disk, escaping, atomic rewrites, ordering, and the JSON summary."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from genprov.eval import MeanCI
from genprov.exceptions import ConfigError, DataError
from genprov.report import (
    Figure,
    Gallery,
    GalleryItem,
    GalleryRow,
    Image,
    KeyValue,
    Report,
    Section,
    Table,
    Text,
    format_value,
    slugify,
)
from genprov.report.figures import make_grid, roc_curves, to_png_bytes
from genprov.utils.io import atomic_write_json

SRC = re.compile(r'<img[^>]*\bsrc="([^"]+)"')


def _images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _full_report(tmp_path: Path) -> Report:
    images = _images()
    png_file = tmp_path / "external.png"
    png_file.write_bytes(to_png_bytes(images[0], scale=2))
    summary = Section("summary", "Summary <of> results", intro="Intro with <b>tags</b> and **bold**.")
    summary.add(
        KeyValue({"AUC": 0.9731, "LDS": MeanCI(0.31, 0.25, 0.37, 50)}, notes={"AUC": "higher is better"}),
        Text("Markdown **works**; raw <script>alert('x')</script> does not. [bad](javascript:alert(1))"),
        Text("plain <i>text</i>\nsecond line", markdown=False, tone="warning"),
    )
    results = Section("results", "Results").add(
        Table(
            [
                {"method": "flipad", "auc": 0.97123, "n": 100, "note": "<i>best</i>"},
                {"method": "raw", "auc": 0.61, "n": 100, "lds": MeanCI(0.1, 0.0, 0.2, 10)},
                {"method": "nan", "auc": float("nan"), "n": 100},
            ],
            caption="Attribution <table>",
            highlight={"auc": "max"},
            float_format={"auc": ".4f"},
        ),
        Figure(roc_curves({"a": (np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.8, 1.0]), 0.9)}), caption="ROC"),
    )
    gallery = Section("gallery", "Top influencers").add(
        Gallery.top_k(
            images[0],
            images,
            [1, 2, 3],
            [0.9, 0.5, 0.1],
            negative_indices=torch.tensor([4, 5]),
            negative_scores=torch.tensor([-0.2, -0.7]),
            caption="Query <0>",
        ),
        Gallery([GalleryRow("mixed", [GalleryItem(png_file, "file"), GalleryItem(to_png_bytes(images[1]), "bytes")])]),
        Image(make_grid(images, nrow=3), caption="Samples"),
        Image(png_file, caption="From a file", width=64),
    )
    return (
        Report("Report <title>", subtitle="sub & title", meta={"seed": 0, "data": "digits"})
        .add(summary)
        .add(results)
        .add(gallery)
    )


def test_write_every_block_type(tmp_path: Path) -> None:
    path = _full_report(tmp_path).write(tmp_path / "out")
    assert path == tmp_path / "out" / "index.html"
    html = path.read_text(encoding="utf-8")
    for title in ("Summary &lt;of&gt; results", "Results", "Top influencers"):
        assert title in html
    assert 'href="#summary"' in html  # table of contents
    assert "0.9712" in html  # per-column float format
    assert "<strong>0.9712</strong>" in html  # best value highlighted
    assert "0.100 [0.000, 0.200]" in html  # MeanCI cell
    assert "n/a" in html  # NaN cell
    assert "95% CI [0.250, 0.370]" in html
    assert "higher is better" in html
    sources = SRC.findall(html)
    assert len(sources) == 1 + (1 + 3 + 2) + 2 + 2  # figure, gallery 1, gallery 2, two images
    for src in sources:
        assert not src.startswith(("http:", "https:", "//")), src
        assert (path.parent / src).is_file(), src
    assert "image-rendering: pixelated" in html
    assert 'class="pixelated"' in html


def test_user_text_is_escaped(tmp_path: Path) -> None:
    html = _full_report(tmp_path).write(tmp_path / "out").read_text(encoding="utf-8")
    assert "<script" not in html
    assert "&lt;script&gt;" in html
    assert "Report &lt;title&gt;" in html
    assert "sub &amp; title" in html
    assert "&lt;b&gt;tags&lt;/b&gt;" in html
    assert "<strong>bold</strong>" in html
    assert "&lt;i&gt;best&lt;/i&gt;" in html
    assert "plain &lt;i&gt;text&lt;/i&gt;<br>second line" in html
    assert "javascript:" not in html.replace("[bad](javascript:alert(1))", "")
    assert "Attribution &lt;table&gt;" in html
    assert "Query &lt;0&gt;" in html
    assert "<link" not in html  # no external stylesheets


def test_writing_twice_overwrites_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = Report("r").add(Section("s", "S").add(Table([{"x": 1.5}])))
    report.write(out)
    report.section("s").blocks[0] = Table([{"x": 2.5}])
    report.write(out)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "2.500" in html
    assert "1.500" not in html
    assert not list(out.rglob("*.tmp"))
    # a failing render leaves the previous report intact
    report.section("s").add(Table([{"x": 1}], highlight={"missing": "max"}))
    with pytest.raises(ConfigError, match="missing"):
        report.write(out)
    assert (out / "index.html").read_text(encoding="utf-8") == html
    assert not list(out.rglob("*.tmp"))


def test_embedded_images_and_to_html(tmp_path: Path) -> None:
    report = Report("r").add(Section("s", "S").add(Image(_images()[0])))
    path = report.write(tmp_path, filename="report.html", embed_images=True)
    html = path.read_text(encoding="utf-8")
    assert path.name == "report.html"
    assert not (tmp_path / "figures").exists()
    assert SRC.findall(html)[0].startswith("data:image/png;base64,")
    assert report.to_html() == html
    with pytest.raises(ConfigError, match="filename"):
        report.write(tmp_path, filename="../x.html")


def test_section_ordering() -> None:
    report = Report("r")
    report.add(Section("b", "B")).add(Section("d", "D"))
    report.add(Section("a", "A"), before="b").add(Section("c", "C"), after="b")
    assert [s.id for s in report.sections] == ["a", "b", "c", "d"]
    assert report.remove("c").title == "C"
    assert report.section("d").title == "D"
    with pytest.raises(ConfigError, match="already has"):
        report.add(Section("a", "again"))
    with pytest.raises(ConfigError, match="no section 'zz'"):
        report.add(Section("e", "E"), after="zz")
    with pytest.raises(ConfigError, match="not both"):
        report.add(Section("e", "E"), after="a", before="b")
    with pytest.raises(ConfigError, match="lower case"):
        Section("Bad Id", "x")
    with pytest.raises(ConfigError, match="report blocks"):
        Section("s", "S").add("text")  # type: ignore[arg-type]
    assert slugify("Which model made it?") == "which-model-made-it"
    report.sections.append(Section("a", "duplicate"))
    with pytest.raises(ConfigError, match="unique"):
        report.to_html()


def test_to_dict_is_json_safe(tmp_path: Path) -> None:
    summary = _full_report(tmp_path).to_dict()
    atomic_write_json(tmp_path / "results.json", summary)
    loaded = json.loads((tmp_path / "results.json").read_text())
    table = loaded["sections"][1]["blocks"][0]
    assert table["columns"] == ["method", "auc", "n", "note", "lds"]
    assert table["rows"][2]["auc"] is None  # NaN
    assert table["rows"][1]["lds"]["mean"] == 0.1
    assert loaded["sections"][0]["blocks"][0]["items"]["AUC"] == 0.9731
    assert loaded["sections"][2]["blocks"][0]["rows"][1]["items"][1]["score"] == pytest.approx(-0.7)


def test_table_highlight_min_ties_and_empty() -> None:
    rows = [{"m": "a", "err": 0.2}, {"m": "b", "err": 0.1}, {"m": "c", "err": 0.1}, {"m": "d", "err": "—"}]
    ctx = Table(rows, highlight={"err": "min"}).context(None, "k")  # type: ignore[arg-type]
    assert [r[1]["best"] for r in ctx["rows"]] == [False, True, True, False]
    assert ctx["columns"][1]["numeric"]
    html = Report("r").add(Section("s", "S").add(Table([], caption="none"))).to_html()
    assert "No rows." in html
    with pytest.raises(ConfigError, match="'max' or 'min'"):
        Table(rows, highlight={"err": "best"}).context(None, "k")  # type: ignore[arg-type, dict-item]


def test_format_value() -> None:
    assert format_value(None) == "—"
    assert format_value(True) == "yes"
    assert format_value(12345) == "12345"
    assert format_value(np.float32(0.5)) == "0.500"
    assert format_value(torch.tensor(2.0), ".1f") == "2.0"
    assert format_value(math.inf) == "∞"
    assert format_value(float("nan")) == "n/a"
    assert format_value(MeanCI(1.0, 0.5, 1.5, 3), ".1f") == "1.0 [0.5, 1.5]"
    assert format_value("x") == "x"


@pytest.mark.parametrize(
    ("block", "error", "match"),
    [
        (Image(b"not a png"), DataError, "PNG signature"),
        (Image(Path("/nonexistent/x.png")), DataError, "does not exist"),
        (Image(torch.zeros(2, 2, 8, 8)), DataError, "shape"),
        (Image(torch.full((1, 8, 8), float("nan"))), DataError, "NaN"),
        (Text("x", tone="loud"), ConfigError, "tone"),  # type: ignore[arg-type]
        (KeyValue({"a": 1}, notes={"b": "x"}), ConfigError, "notes"),
        (Gallery([GalleryRow("r", [])], thumb_px=2), ConfigError, "thumb_px"),
    ],
)
def test_bad_blocks_raise_on_render(block: object, error: type[Exception], match: str) -> None:
    report = Report("r").add(Section("s", "S").add(block))  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        report.to_html()


def test_gallery_and_figure_input_errors() -> None:
    images = _images()
    with pytest.raises(DataError, match="indices must be integers"):
        Gallery.top_k(None, images, [0, 99], [1.0, 0.5])
    with pytest.raises(DataError, match="negative_scores"):
        Gallery.top_k(None, images, [0], [1.0], negative_indices=[1])
    with pytest.raises(DataError, match="one entry per image"):
        GalleryRow.from_tensors("r", images[:3], scores=[1.0])
    with pytest.raises(DataError, match="matplotlib Figure"):
        Figure(images)  # type: ignore[arg-type]
