"""Reports: an ordered list of sections, rendered to one self-contained HTML page.

The page has inline CSS, no scripts and no external fetches (it opens offline and prints cleanly), a
table of contents, and images either as PNG files in ``figures/`` next to the HTML or inlined as
``data:`` URIs. Which sections a report has is up to its builder (the demo and the experiments); this
module only makes adding and ordering them easy.

Example:
    >>> from genprov.report import Report, Section, Table, Text
    >>> report = Report("FLIPAD on digits", subtitle="single-model attribution")
    >>> _ = report.add(Section("summary", "Summary").add(Text("The detector separates **own** samples.")))
    >>> _ = report.add(Section("results", "Results").add(Table([{"method": "flipad", "auc": 0.97}])))
    >>> [s.id for s in report.sections]
    ['summary', 'results']
    >>> "FLIPAD on digits" in report.to_html()
    True
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jinja2

from genprov.exceptions import ConfigError
from genprov.report.blocks import AssetSink, Block, FolderAssets, InlineAssets, render_markdown
from genprov.utils.io import atomic_write_bytes, atomic_write_text

__all__ = ["Report", "Section", "slugify"]

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def slugify(title: str) -> str:
    """A section id from a title: lower case, runs of other characters become ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug or "section"


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("genprov.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _genprov_version() -> str:
    try:
        return version("genprov")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "dev"


@dataclasses.dataclass
class Section:
    """One numbered section of a report.

    Attributes:
        id: Anchor and file-name prefix: lower case letters, digits, ``-`` and ``_`` (see :func:`slugify`).
        title: Heading, also listed in the table of contents.
        intro: Optional markdown paragraph under the heading (HTML is escaped).
        blocks: Content, top to bottom.
    """

    id: str
    title: str
    intro: str = ""
    blocks: list[Block] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise ConfigError(
                f"Section id must be lower case letters, digits, '-' or '_' (e.g. {slugify(str(self.id))!r}); "
                f"got {self.id!r}."
            )

    def add(self, *blocks: Block) -> Section:
        """Append ``blocks``; returns ``self`` so calls chain."""
        for block in blocks:
            if not isinstance(block, Block):
                raise ConfigError(
                    f"Section {self.id!r}: can only add report blocks (Text, Table, ...); got {type(block).__name__}."
                )
        self.blocks.extend(blocks)
        return self

    def to_dict(self) -> dict[str, Any]:
        """``{"id", "title", "intro", "blocks": [...]}`` (JSON-safe)."""
        return {"id": self.id, "title": self.title, "intro": self.intro, "blocks": [b.to_dict() for b in self.blocks]}


@dataclasses.dataclass
class Report:
    """An HTML report: title, subtitle, facts about the run, and ordered sections.

    Attributes:
        title: Page title.
        subtitle: One line under the title.
        sections: Sections in display order; use :meth:`add` to insert with ordering.
        meta: Facts shown under the title, e.g. ``{"dataset": "digits", "seed": "0"}``.
    """

    title: str
    subtitle: str = ""
    sections: list[Section] = dataclasses.field(default_factory=list)
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def add(self, section: Section, *, before: str | None = None, after: str | None = None) -> Report:
        """Add ``section`` at the end, or just ``before`` / ``after`` the section with that id.

        Returns:
            ``self``, so calls chain.

        Raises:
            ConfigError: If the id is taken, or ``before`` / ``after`` names no section (or both are given).
        """
        if not isinstance(section, Section):
            raise ConfigError(f"Report.add takes a Section; got {type(section).__name__}.")
        if any(s.id == section.id for s in self.sections):
            raise ConfigError(f"The report already has a section {section.id!r}; section ids must be unique.")
        if before is not None and after is not None:
            raise ConfigError("Pass either before= or after= to Report.add, not both.")
        if before is None and after is None:
            self.sections.append(section)
        else:
            anchor = before if before is not None else after
            position = self._position(str(anchor))
            self.sections.insert(position if before is not None else position + 1, section)
        return self

    def section(self, id: str) -> Section:
        """The section with this id."""
        return self.sections[self._position(id)]

    def remove(self, id: str) -> Section:
        """Remove and return the section with this id."""
        return self.sections.pop(self._position(id))

    def _position(self, id: str) -> int:
        for i, s in enumerate(self.sections):
            if s.id == id:
                return i
        raise ConfigError(f"The report has no section {id!r}; its sections are {[s.id for s in self.sections]}.")

    def _render(self, assets: AssetSink) -> str:
        ids = [s.id for s in self.sections]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigError(f"Section ids must be unique; {duplicates} appear more than once.")
        sections = [
            {
                "id": s.id,
                "title": s.title,
                "intro": render_markdown(s.intro) if s.intro else "",
                "blocks": [block.context(assets, f"{s.id}-{i + 1}") for i, block in enumerate(s.blocks)],
            }
            for s in self.sections
        ]
        template = _environment().get_template("report.html.j2")
        return template.render(
            title=self.title,
            subtitle=self.subtitle,
            meta=[(str(k), str(v)) for k, v in self.meta.items()],
            sections=sections,
            version=_genprov_version(),
        )

    def to_html(self) -> str:
        """The report as one self-contained HTML string, images inlined as ``data:`` URIs."""
        return self._render(InlineAssets())

    def write(self, out_dir: str | Path, *, filename: str = "index.html", embed_images: bool = False) -> Path:
        """Write the report into ``out_dir`` and return the path of the HTML file.

        Every file is written atomically (temporary file, fsync, rename): images first, then the HTML, so
        an interrupted write leaves the previous report readable. Writing again overwrites in place;
        PNGs of sections that no longer exist are left alone.

        Args:
            out_dir: Folder to write into (created if missing).
            filename: Name of the HTML file, e.g. ``"report.html"`` beside an experiment's results.
            embed_images: Inline images as ``data:`` URIs (one file to share) instead of ``figures/*.png``.

        Returns:
            ``out_dir / filename``.
        """
        out = Path(out_dir)
        if Path(filename).name != filename or not filename.endswith((".html", ".htm")):
            raise ConfigError(f"filename must be a plain file name ending in .html; got {filename!r}.")
        if embed_images:
            html = self._render(InlineAssets())
        else:
            assets = FolderAssets("figures")
            html = self._render(assets)
            for name, png in assets.files.items():
                atomic_write_bytes(out / assets.folder / name, png)
        path = out / filename
        atomic_write_text(path, html)
        return path

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (titles, tables, metrics and captions; no images), e.g. for ``results.json``."""
        return {
            "title": self.title,
            "subtitle": self.subtitle,
            "meta": {str(k): str(v) for k, v in self.meta.items()},
            "sections": [s.to_dict() for s in self.sections],
        }
