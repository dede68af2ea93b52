"""Where the service keeps its answers: a folder or memory, bounded by total size and age.

Each answer is one ``result.json`` and the query image (``query.png``, stored at the size it was analysed
at). On disk they live in ``FOLDER/<id>/``; when no writable folder is available the store keeps them in
memory instead (lost on restart) and :meth:`ResultStore.describe` says why. Either way the store evicts the
least recently used answers first once their total size passes ``max_bytes``, and any answer unused for
longer than ``max_age_s``. Only folders whose name is a result id are ever touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genprov.exceptions import ConfigError
from genprov.utils.artifacts import check_output_folder
from genprov.utils.io import atomic_write_bytes, atomic_write_json, read_json

__all__ = ["DEFAULT_RESULTS_MAX_AGE_H", "DEFAULT_RESULTS_MAX_MB", "RESULT_ID", "ResultStore"]

log = logging.getLogger(__name__)

#: What a result id looks like (16 hex digits); anything else is never looked up or deleted.
RESULT_ID = re.compile(r"^[0-9a-f]{16}$")
_JSON, _IMAGE = "result.json", "query.png"
#: Default total size of kept answers, in MB.
DEFAULT_RESULTS_MAX_MB = 256.0
#: Default age (hours unused) after which an answer is removed.
DEFAULT_RESULTS_MAX_AGE_H = 7 * 24.0


@dataclass
class _Item:
    size: int
    used: float  # time.time() of the last write or read
    data: tuple[bytes, bytes] | None = None  # (result JSON, query PNG) when kept in memory


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (``None`` when they can): a real probe, not permission bits.

    A folder created here is private to the service's user (0700): it will hold other people's uploads.
    """
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{folder} is not writable ({err.strerror or err})"
    return None


class ResultStore:
    """Answers by id, kept in ``folder`` (or in memory when ``folder`` is ``None``), bounded in size and age.

    Thread-safe. Use :meth:`open` to pick the folder.
    """

    def __init__(
        self,
        folder: Path | None,
        *,
        max_bytes: int,
        max_age_s: float | None,
        note: str | None = None,
        fallback_reader: Path | None = None,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.note = note
        self._reader = fallback_reader
        self._items: OrderedDict[str, _Item] = OrderedDict()  # least recently used first
        self._bytes = 0  # total size of self._items
        self._lock = threading.Lock()
        if folder is not None:
            self._scan(folder)

    @classmethod
    def open(
        cls,
        workspace_results: Path,
        *,
        results_dir: Path | None,
        max_bytes: int,
        max_age_s: float | None,
    ) -> ResultStore:
        """The store the service uses.

        ``results_dir`` when given (it must be writable), else ``workspace_results`` when writable, else
        memory: the answers of a read-only workspace are kept in memory and the ones already in its
        results folder stay readable.

        Raises:
            ConfigError: ``results_dir`` was given and is not writable, or holds another artefact.
        """
        if results_dir is not None:
            check_output_folder(results_dir, option="--results-dir")  # old answers are evicted from it
            problem = _unwritable(results_dir)
            if problem:
                raise ConfigError(f"results_dir (--results-dir): {problem}; pass a folder this user can write to.")
            return cls(results_dir, max_bytes=max_bytes, max_age_s=max_age_s)
        problem = _unwritable(workspace_results)
        if problem is None:
            return cls(workspace_results, max_bytes=max_bytes, max_age_s=max_age_s)
        note = (
            f"{problem}: new answers are kept in memory (at most {max_bytes / 2**20:g} MB, lost on restart); "
            "pass --results-dir to keep them on disk"
        )
        log.warning("%s", note)
        return cls(None, max_bytes=max_bytes, max_age_s=max_age_s, note=note, fallback_reader=workspace_results)

    # --------------------------------------------------------------------------------------- public

    def put(self, result_id: str, result: dict[str, Any], query_png: bytes) -> None:
        """Keep one answer (on disk when possible; a failing write keeps it in memory and says so)."""
        encoded = json.dumps(result).encode()
        item = _Item(size=len(encoded) + len(query_png), used=time.time())
        if self.folder is not None:
            try:
                atomic_write_bytes(self.folder / result_id / _IMAGE, query_png)
                atomic_write_json(self.folder / result_id / _JSON, result)
                item.size = sum(p.stat().st_size for p in (self.folder / result_id).iterdir())
            except OSError as err:
                shutil.rmtree(self.folder / result_id, ignore_errors=True)
                self.note = f"writing {self.folder / result_id} failed ({err.strerror or err}); kept in memory"
                log.warning("%s", self.note)
                item.data = (encoded, query_png)
        else:
            item.data = (encoded, query_png)
        with self._lock:
            old = self._items.pop(result_id, None)
            self._bytes += item.size - (old.size if old else 0)
            self._items[result_id] = item
            self._evict()

    def get(self, result_id: str) -> dict[str, Any] | None:
        """The answer ``result_id`` (``None`` when unknown or evicted); marks it as recently used."""
        found = self._use(result_id)
        if found is None:
            return None
        if isinstance(found[0], bytes):
            return json.loads(found[0])
        try:
            return read_json(found[0])
        except (OSError, ValueError):  # evicted meanwhile, or removed by hand
            return None

    def query_png(self, result_id: str) -> bytes | None:
        """The query image of answer ``result_id`` (``None`` when unknown or evicted)."""
        found = self._use(result_id)
        if found is None:
            return None
        if isinstance(found[1], bytes):
            return found[1]
        try:
            return found[1].read_bytes()
        except OSError:  # evicted meanwhile, or removed by hand
            return None

    def describe(self) -> dict[str, Any]:
        """Where answers go and how many are kept (for ``/health``; takes no lock, so it never waits)."""
        return {
            "store": "disk" if self.folder is not None else "memory",
            "folder": str(self.folder) if self.folder is not None else None,
            "count": len(self._items),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "max_age_s": self.max_age_s,
            "note": self.note,
        }

    # -------------------------------------------------------------------------------------- private

    def _use(self, result_id: str) -> tuple[bytes | Path, bytes | Path] | None:
        if not RESULT_ID.match(result_id):
            return None
        with self._lock:
            self._evict()
            item = self._items.get(result_id)
            if item is not None:
                item.used = time.time()
                self._items.move_to_end(result_id)
                if item.data is not None:
                    return item.data
                assert self.folder is not None
                base = self.folder / result_id
                return base / _JSON, base / _IMAGE
        if self._reader is not None and (self._reader / result_id / _JSON).is_file():
            return self._reader / result_id / _JSON, self._reader / result_id / _IMAGE
        return None

    def _scan(self, folder: Path) -> None:
        """Index the answers already in ``folder`` (oldest first); remove incomplete ones."""
        found = []
        for path in folder.iterdir() if folder.is_dir() else ():
            if not (path.is_dir() and RESULT_ID.match(path.name)):
                continue
            if not (path / _JSON).is_file():
                shutil.rmtree(path, ignore_errors=True)
                continue
            files = [p.stat() for p in path.iterdir() if p.is_file()]
            found.append((max(s.st_mtime for s in files), path.name, sum(s.st_size for s in files)))
        for used, name, size in sorted(found):
            self._items[name] = _Item(size=size, used=used)
            self._bytes += size
        with self._lock:
            self._evict()

    def _evict(self) -> None:
        """Drop answers unused for longer than ``max_age_s``, then the least recently used beyond ``max_bytes``."""
        now = time.time()
        while self._items:
            result_id, item = next(iter(self._items.items()))
            expired = self.max_age_s is not None and now - item.used > self.max_age_s
            if not expired and self._bytes <= self.max_bytes:
                break
            del self._items[result_id]
            self._bytes -= item.size
            if item.data is None and self.folder is not None:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self.folder / result_id)
