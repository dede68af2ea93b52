"""Shards of a feature store computed on a backend: in this process, or as Ray tasks on a cluster.

A long computation over examples (TRAK / D-TRAK featurization of a training or query set) is cut into the
shards of its :class:`~genprov.storage.FeatureStore`: shard ``i`` holds rows ``[start, stop)``. A *task*
computes the rows of one shard from the example indices alone (seeds derive from ``(seed, example, t)``), so
every shard gives the same numbers in whichever process, on whichever worker and in whatever order it runs.

* :class:`Shard`: a shard's index, its rows and the store it goes to.
* :class:`Backend`: where shards run. :class:`InProcessBackend` (the default: one after the other, here),
  :class:`ProcessBackend` (spawned processes on this machine, no extra) and :class:`RayBackend` (Ray tasks on a
  local or existing cluster, ``genprov[ray]``).
* :func:`run_shards`: the driver. Under the store's :func:`driver_lock` it runs the missing shards on a backend
  and writes each finished one with :meth:`FeatureStore.write_shard` (rows flushed, then the manifest marks it
  done). Workers only compute and return their rows; the driver is the store's only writer, so a worker that
  dies mid-shard leaves nothing behind (Ray retries its task), a driver killed mid-run leaves finished shards
  done and the others pending (run again to resume), and workers need no access to the store's file system.
* :func:`driver_lock`: one driver per store. A second one is refused with a :class:`StoreLockedError` naming
  the holder (pid, host, start time); the lock of a dead process on this host is taken over with a warning.
  Reading a store never takes it.

Example:
    >>> store = FeatureStore.create(tmp, n_rows=10, arrays={"features": 4}, spec={"seed": 0}, shard_size=4)  # doctest: +SKIP
    >>> run_shards(store, lambda start, stop: {"features": compute(start, stop)}, RayBackend(workers=2))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from genprov.exceptions import ConfigError, DataError, GenprovError, MissingDependencyError
from genprov.storage.feature_store import FeatureStore
from genprov.storage.index import FeatureIndex, normalize_rows
from genprov.utils.progress import progress

__all__ = [
    "BACKENDS",
    "DRIVER_LOCK_FILE",
    "Backend",
    "InProcessBackend",
    "ProcessBackend",
    "RayBackend",
    "ResultHook",
    "Shard",
    "ShardTask",
    "StoreLockedError",
    "driver_lock",
    "import_ray",
    "make_backend",
    "run_index_shards",
    "run_shards",
    "store_shards",
]

logger = logging.getLogger(__name__)

#: Backend names the CLI accepts (``--backend``).
BACKENDS = ("inprocess", "processes", "ray")
#: The driver lock file in a store folder: empty when free, else the holder's JSON record.
DRIVER_LOCK_FILE = ".driver.lock"


class StoreLockedError(GenprovError):
    """Another driver is filling this store (its lock names the holder)."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of a store: the unit a backend computes and the store records as done.

    The seeds of its rows derive from ``(seed, example index, t)`` (e.g. TRAK's noise of example ``i`` at
    timestep ``t``), so a shard's numbers do not depend on where or when it runs.

    Attributes:
        index: Shard number in the store.
        start: First row.
        stop: One past the last row.
        store: The store folder its rows are written to.
    """

    index: int
    start: int
    stop: int
    store: Path

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def rows(self) -> range:
        """The example indices of the shard (what seeds its randomness)."""
        return range(self.start, self.stop)


def store_shards(store: FeatureStore, indices: Sequence[int] | None = None) -> list[Shard]:
    """The :class:`Shard` of each of ``indices`` (default: every shard) of ``store``, with its bounds."""
    chosen = range(store.n_shards) if indices is None else indices
    return [Shard(int(i), *store.shard_bounds(int(i)), store.path) for i in chosen]


@runtime_checkable
class ShardTask(Protocol):
    """Computes the rows ``[start, stop)`` of every array of a store: ``{name: (stop - start, dim) array}``.

    A task sent to Ray workers must be picklable and rebuild what it needs (its model, from a checkpoint
    folder or from the object store) in the worker; its result must depend on ``(start, stop)`` only.
    """

    def __call__(self, start: int, stop: int) -> Mapping[str, np.ndarray]: ...


#: The driver's step for a finished shard (``run_shards(on_result=...)``): ``(shard, task's arrays) -> store's arrays``.
ResultHook = Callable[[Shard, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@runtime_checkable
class Backend(Protocol):
    """Runs a task over shards and yields each result as it finishes (in any order)."""

    @property
    def name(self) -> str:
        """The backend's name (``--backend``)."""
        ...

    def run(self, task: ShardTask, shards: Sequence[Shard]) -> Iterator[tuple[Shard, Mapping[str, np.ndarray]]]:
        """Compute ``task(shard.start, shard.stop)`` for every shard; yield ``(shard, arrays)`` as each finishes."""
        ...


@dataclasses.dataclass(frozen=True)
class InProcessBackend:
    """Shards one after the other in this process (genprov's behaviour without a cluster)."""

    name: str = "inprocess"

    def run(self, task: ShardTask, shards: Sequence[Shard]) -> Iterator[tuple[Shard, Mapping[str, np.ndarray]]]:
        """Compute the shards in order, here."""
        for shard in shards:
            yield shard, task(shard.start, shard.stop)


@dataclasses.dataclass(frozen=True)
class ProcessBackend:
    """Shards in ``workers`` spawned processes on this machine, one torch thread each (no Ray needed); the task
    must be picklable, as for Ray. A worker's error is raised on the driver, after which the finished shards stay
    written (run again to resume)."""

    workers: int = 2
    name: str = "processes"

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1; got {self.workers}.")

    def run(self, task: ShardTask, shards: Sequence[Shard]) -> Iterator[tuple[Shard, Mapping[str, np.ndarray]]]:
        """Compute the shards in the pool; yield each as it finishes."""
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=context) as pool:
            pending: dict[Future[dict[str, np.ndarray]], Shard] = {
                pool.submit(_run_on_worker, task, shard.start, shard.stop, 1): shard for shard in shards
            }
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield pending.pop(future), future.result()
            finally:
                for future in pending:
                    future.cancel()


def import_ray() -> Any:
    """Import ``ray`` or raise :class:`MissingDependencyError` with the pip command."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "ray", "The Ray backend (--backend ray)") from None
    return ray


def _run_on_worker(task: ShardTask, start: int, stop: int, threads: int) -> dict[str, np.ndarray]:
    """What a Ray task runs: the shard's rows as numpy arrays, with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    return {name: np.asarray(values) for name, values in task(start, stop).items()}


def _worker_error(err: Exception, shard: Shard) -> Exception:
    """The error to raise on the driver for a failed Ray task: the task's own genprov error, else a DataError."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, GenprovError):
        return cause
    return DataError(
        f"{shard.store}: shard {shard.index} (rows {shard.start}..{shard.stop - 1}) failed on its Ray worker after "
        f"its retries ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no message'}); the finished "
        "shards are kept: fix the cause and run the same command again to resume."
    )


@dataclasses.dataclass(frozen=True)
class RayBackend:
    """Shards as Ray tasks, at most ``workers`` at a time, each retried ``max_retries`` times if its worker dies.

    The task is put in Ray's object store once; every Ray task computes one shard and returns its rows to the
    driver, which writes them (workers never write the store, so they need not see its file system).

    Args:
        address: ``None``: the Ray instance this process already joined, else a new local one with
            ``workers * cpus_per_worker`` CPUs (shut down at the end); ``"auto"``: the running cluster of this
            machine (``ray start --head``); ``"HOST:PORT"``: that cluster's head.
        workers: Shards computed at once.
        cpus_per_worker: CPUs (and torch threads) of each task; keep it equal to the driver's torch threads
            for features bit-identical to an in-process run.
        max_retries: Retries of a task whose worker process died (Ray's ``max_retries``).
    """

    address: str | None = None
    workers: int = 1
    cpus_per_worker: int = 1
    max_retries: int = 3
    name: str = "ray"

    def __post_init__(self) -> None:
        for field in ("workers", "cpus_per_worker"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"RayBackend {field} must be a positive integer (--workers N); got {value!r}.")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"RayBackend max_retries must be a non-negative integer; got {self.max_retries!r}.")

    @contextlib.contextmanager
    def _connected(self) -> Iterator[Any]:
        """Ray, initialised (and shut down again if this call started it)."""
        ray = import_ray()
        if ray.is_initialized():
            yield ray
            return
        options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if self.address is None:
            options["num_cpus"] = self.workers * self.cpus_per_worker
        try:
            ray.init(address=self.address, **options)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise ConfigError(
                f"--address {self.address}: cannot connect to a Ray cluster ({str(err).splitlines()[0]}); start one "
                "with 'ray start --head' (then --address auto, or HOST:PORT of its head), or leave --address out "
                "for a local one."
            ) from err
        try:
            yield ray
        finally:
            ray.shutdown()

    def run(self, task: ShardTask, shards: Sequence[Shard]) -> Iterator[tuple[Shard, Mapping[str, np.ndarray]]]:
        """Submit the shards as Ray tasks (``workers`` in flight) and yield each as it finishes."""
        if not shards:
            return
        with self._connected() as ray:
            remote = ray.remote(num_cpus=self.cpus_per_worker, max_retries=self.max_retries)(_run_on_worker)
            task_ref = ray.put(task)
            queue = list(shards)
            pending: dict[Any, Shard] = {}
            try:
                while queue or pending:
                    while queue and len(pending) < self.workers:
                        shard = queue.pop(0)
                        ref = remote.remote(task_ref, shard.start, shard.stop, self.cpus_per_worker)
                        pending[ref] = shard
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        shard = pending.pop(ref)
                        try:
                            result = ray.get(ref)
                        except ray.exceptions.RayError as err:
                            raise _worker_error(err, shard) from err
                        yield shard, result
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)


def make_backend(name: str, *, address: str | None = None, workers: int = 1) -> Backend:
    """The backend called ``name`` (``"inprocess"``, ``"processes"`` or ``"ray"``) with the CLI's options.

    Raises:
        ConfigError: An unknown name, or ``--address`` / ``--workers`` given to the in-process backend.
    """
    if name == "ray":
        return RayBackend(address=address, workers=workers)
    if name not in BACKENDS:
        raise ConfigError(f"--backend must be one of {list(BACKENDS)}; got {name!r}.")
    if address is not None:
        raise ConfigError("--address is for --backend ray (a cluster); drop it or add --backend ray.")
    if name == "processes":
        return ProcessBackend(workers=workers)
    if workers != 1:
        raise ConfigError("--workers is for --backend processes or ray; drop it or add one of them.")
    return InProcessBackend()


# ------------------------------------------------------------------------------------------ driver lock


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _holder_alive(holder: Mapping[str, Any]) -> bool:
    """Whether the recorded holder may still run: always for another host (its liveness is unknown here)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    return isinstance(pid, int) and _process_alive(pid)


def _describe(holder: Mapping[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


@contextlib.contextmanager
def _exclusive(handle: Any) -> Iterator[None]:
    """``flock`` the open lock file while its record is read and written (no-op where unsupported)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the record alone guards the store
        yield
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_holder(handle: Any) -> dict[str, Any] | None:
    handle.seek(0)
    text = handle.read().decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": None, "host": None, "started": None, "unreadable": text[:80]}
    return holder if isinstance(holder, dict) else {"unreadable": text[:80]}


def _write_holder(handle: Any, holder: Mapping[str, Any] | None) -> None:
    handle.seek(0)
    handle.truncate()
    if holder is not None:
        handle.write(json.dumps(dict(holder)).encode())
    handle.flush()
    os.fsync(handle.fileno())


@contextlib.contextmanager
def driver_lock(folder: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Hold the driver lock of the store in ``folder`` (created) while the block runs; yields the holder record.

    The lock file (:data:`DRIVER_LOCK_FILE`) records ``{pid, host, started, token}``; it is emptied, never
    deleted, on release, and every read-modify-write of it holds an ``flock``, so two drivers never both win.
    A record of a process that no longer runs on this host is stale: it is taken over with a warning. A record
    of another host is never taken over (delete the file once that driver is known to be dead).

    Raises:
        StoreLockedError: Another driver (of this or another process) holds the lock; names it.
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    file = path / DRIVER_LOCK_FILE
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "token": uuid.uuid4().hex}
    with open(file, "a+b") as handle, _exclusive(handle):
        holder = _read_holder(handle)
        if holder is not None:
            if "unreadable" not in holder and _holder_alive(holder):
                raise StoreLockedError(
                    f"{path} is being filled by another driver ({_describe(holder)}); wait for it to finish, or, "
                    f"if it is dead, delete {file} and run again."
                )
            logger.warning("%s: taking over the driver lock of a process that no longer runs (%s)", path, holder)
        _write_holder(handle, me)
    try:
        yield me
    finally:
        with open(file, "r+b") as handle, _exclusive(handle):
            holder = _read_holder(handle)
            if holder is not None and holder.get("token") == me["token"]:
                _write_holder(handle, None)


# ------------------------------------------------------------------------------------------ driver


def run_shards(
    store: FeatureStore,
    task: ShardTask,
    backend: Backend | None = None,
    *,
    desc: str = "shards",
    show_progress: bool | None = None,
    on_result: ResultHook | None = None,
) -> list[int]:
    """Compute the store's missing shards with ``task`` on ``backend`` and write each as it finishes.

    Holds the store's :func:`driver_lock` throughout. Each finished shard is written with
    :meth:`FeatureStore.write_shard` (rows flushed before the manifest marks it done), so an interrupted run
    resumes with only the shards still missing; the numbers do not depend on the backend, the number of
    workers or the order in which shards finish.

    Args:
        store: An opened store (:meth:`FeatureStore.create` / :meth:`FeatureStore.open`).
        task: Computes the arrays of rows ``[start, stop)``.
        backend: Where shards run (default :class:`InProcessBackend`).
        desc: Progress bar label.
        show_progress: Progress bar over shards.
        on_result: Run by the driver on each finished shard before the store writes it: it may write what the
            task returned beside the store (e.g. a trained model's files, which workers never write) and returns
            the arrays for the store. The shard is marked done only after it returns.

    Returns:
        The shards computed by this call, in the order they finished.

    Raises:
        StoreLockedError: Another driver is filling the store.
        DataError: A task's rows have the wrong shape or non-finite values, or a Ray task failed for good.
    """
    runner: Backend = backend if backend is not None else InProcessBackend()
    computed: list[int] = []
    with driver_lock(store.path):
        shards = store_shards(store, store.missing_shards())
        if shards and len(shards) < store.n_shards:
            logger.info("%s: resuming, %d of %d shards left", store.path, len(shards), store.n_shards)
        results = runner.run(task, shards)
        try:
            for shard, arrays in progress(results, desc=desc, total=len(shards), show=show_progress):
                store.write_shard(shard.index, arrays if on_result is None else on_result(shard, arrays))
                computed.append(shard.index)
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # a failed write stops the backend's remaining tasks
    return computed


# ------------------------------------------------------------------------------------------ index segments


class _SegmentOpenedError(Exception):
    """Raised by the first row computation :func:`run_index_shards` asks ``FeatureIndex.add_computed`` for."""


def _open_segment(start: int, stop: int) -> np.ndarray:
    raise _SegmentOpenedError


@dataclasses.dataclass(frozen=True)
class _IndexRows:
    """A task's ``features`` made the rows :meth:`FeatureIndex.add_computed` stores: float32, and unit rows for a
    cosine index (``normalize_rows``, as the index prepares computed rows), on the worker."""

    task: ShardTask
    cosine: bool

    def __call__(self, start: int, stop: int) -> dict[str, np.ndarray]:
        import torch

        rows = torch.as_tensor(np.asarray(self.task(start, stop)["features"])).to(torch.float32)
        return {"features": (normalize_rows(rows) if self.cosine else rows).numpy()}


def run_index_shards(
    index: FeatureIndex,
    n_rows: int,
    task: ShardTask,
    backend: Backend | None = None,
    *,
    key: str = "",
    shard_size: int = 1024,
    desc: str = "indexing",
    show_progress: bool | None = None,
) -> range:
    """Append ``n_rows`` rows to a feature index, their shards computed by ``task`` on ``backend``; resumable.

    The rows are those :meth:`FeatureIndex.add_computed` would store for ``compute = task(start, stop)["features"]``
    (same segment, same shards, same normalisation), computed by the backend and written by this driver as each
    shard finishes, under the index's :func:`driver_lock` (and the segment's). An unfinished last segment with the
    same ``key`` and ``n_rows`` is resumed: only its missing shards are computed.

    Args:
        index: An opened index (:meth:`FeatureIndex.create`).
        n_rows: Rows to append (numbered from 0 for ``task``).
        task: Computes ``{"features": (stop - start, dim)}`` of rows ``[start, stop)``.
        backend: Where shards run (default :class:`InProcessBackend`).
        key: The segment's label (e.g. a data fingerprint); a resumed segment must carry the same.
        shard_size: Rows per shard of a new segment.
        desc: Progress bar label.
        show_progress: Progress bar over shards.

    Returns:
        The index rows the new rows got.

    Raises:
        StoreLockedError: Another driver is filling the index.
        StoreMismatchError: The last segment is unfinished and belongs to another ``key`` or size.
    """
    with driver_lock(index.path):
        try:  # creates the segment (or finds the unfinished one) and stops at its first missing shard
            return index.add_computed(n_rows, _open_segment, key=key, shard_size=shard_size, show_progress=False)
        except _SegmentOpenedError:
            pass
        segments = index.segments
        store = FeatureStore.open(index.path / "segments" / str(segments[-1]["name"]))
        run_shards(store, _IndexRows(task, index.metric == "cosine"), backend, desc=desc, show_progress=show_progress)
    first = sum(int(s["n_rows"]) for s in segments[:-1])
    return range(first, first + int(n_rows))
