"""HTML reports with pluggable sections, and the figures that go in them.

A :class:`Report` holds ordered :class:`Section` objects; a section holds blocks (:class:`Text`,
:class:`Table`, :class:`KeyValue`, :class:`Image`, :class:`Figure`, :class:`Gallery`). Builders (the demo,
each experiment) decide which sections to add; ``report.write(out_dir)`` produces a self-contained,
offline, printable page. Figure helpers live in :mod:`genprov.report.figures`.

Example:
    >>> import tempfile, torch
    >>> from genprov.report import Gallery, GalleryRow, KeyValue, Report, Section
    >>> report = Report("Demo", subtitle="digits, seed 0", meta={"dataset": "digits"})
    >>> section = Section("data", "Which training images?", intro="Top influencers of one sample.")
    >>> row = GalleryRow.from_tensors("Most positive", torch.zeros(3, 1, 8, 8), scores=[0.9, 0.5, 0.1])
    >>> _ = report.add(section.add(KeyValue({"LDS": 0.31}), Gallery([row], query=torch.zeros(1, 8, 8))))
    >>> report.write(tempfile.mkdtemp()).name
    'index.html'
"""

from genprov.report import blocks
from genprov.report.blocks import *  # noqa: F403 (the names blocks.__all__ lists)
from genprov.report.document import Report, Section, slugify

__all__ = ["Report", "Section", "slugify"]
__all__ += blocks.__all__
