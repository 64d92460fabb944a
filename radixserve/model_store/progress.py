"""Download progress: a tqdm bar on a terminal, JSON lines for machines, log lines otherwise.

Bytes are counted by polling the sizes of the files under the staging directory from a
thread, the library's partial files included. That works the same for every source and
library (huggingface_hub, minio) without hooking into their transfer loops, and it counts
data resumed from an earlier run as done.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from radixserve.model_store.store import DownloadResult

logger = logging.getLogger(__name__)

ProgressMode = Literal["auto", "bar", "json", "log", "none"]
PROGRESS_MODES: tuple[str, ...] = ("auto", "bar", "json", "none")  # what the CLI offers ("log" is auto's fallback)
JSON_INTERVAL_S = 2.0
BAR_INTERVAL_S = 0.5
LOG_INTERVAL_S = 15.0


class Progress(Protocol):
    """What `store.download` reports to. `start`/`stop` bracket the transfers (not called on a
    cache hit); `finish` is called once on success, cache hits included."""

    def start(self, *, uri: str, files_total: int, bytes_total: int, staging: Path) -> None: ...

    def file_done(self) -> None: ...

    def stop(self) -> None: ...

    def finish(self, result: DownloadResult) -> None: ...


def staged_bytes(root: Path) -> int:
    """Bytes in the files under `root` (0 if it does not exist), leaving out radixserve's own
    `.radixserve-*` bookkeeping; files vanishing meanwhile are skipped."""
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) and not entry.name.startswith(".radixserve-"):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


class NoProgress:
    def start(self, *, uri: str, files_total: int, bytes_total: int, staging: Path) -> None:
        pass

    def file_done(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def finish(self, result: DownloadResult) -> None:
        pass


class _Polling:
    """Base: a daemon thread calls `report` every `interval` seconds while transfers run."""

    interval = 1.0

    def __init__(self) -> None:
        self.uri = ""
        self.files_total = self.files_done = 0
        self.bytes_total = 0
        self._staging: Path | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, *, uri: str, files_total: int, bytes_total: int, staging: Path) -> None:
        self.uri, self.files_total, self.bytes_total, self._staging = uri, files_total, bytes_total, staging
        self._stop.clear()
        self.on_start()
        self._thread = threading.Thread(target=self._run, name="download-progress", daemon=True)
        self._thread.start()

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def bytes_done(self) -> int:
        return min(self.bytes_total, staged_bytes(self._staging)) if self._staging else 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.report()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.on_stop()

    def on_start(self) -> None:
        self.report()

    def report(self) -> None:
        """One progress report (each subclass writes its own kind)."""
        raise NotImplementedError

    def on_stop(self) -> None:
        pass

    def finish(self, result: DownloadResult) -> None:
        pass


class JsonProgress(_Polling):
    """One JSON object per line: `progress` events every JSON_INTERVAL_S, then one `done` event."""

    interval = JSON_INTERVAL_S

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream

    def _emit(self, event: dict[str, object]) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps(event) + "\n")
        stream.flush()

    def report(self) -> None:
        self._emit({"event": "progress", "bytes_done": self.bytes_done(), "bytes_total": self.bytes_total,
                    "files_done": self.files_done, "files_total": self.files_total})

    def finish(self, result: DownloadResult) -> None:
        self._emit({"event": "done", "uri": result.uri, "revision": result.revision, "path": str(result.path),
                    "bytes_total": result.bytes_total, "bytes_downloaded": result.bytes_downloaded,
                    "cache_hit": result.cache_hit, "seconds": round(result.seconds, 3)})


class LogProgress(_Polling):
    """For logs that are not a terminal (a pod's): a line every LOG_INTERVAL_S."""

    interval = LOG_INTERVAL_S

    def on_start(self) -> None:
        logger.info("downloading %s: %d files, %s", self.uri, self.files_total, _human(self.bytes_total))

    def report(self) -> None:
        logger.info("downloading %s: %s of %s, %d/%d files", self.uri, _human(self.bytes_done()),
                    _human(self.bytes_total), self.files_done, self.files_total)


class BarProgress(_Polling):
    """A tqdm bar in bytes on stderr."""

    interval = BAR_INTERVAL_S

    def __init__(self) -> None:
        super().__init__()
        self._bar: Any = None  # a tqdm bar (tqdm ships no types)

    def on_start(self) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=self.bytes_total, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=self.uri, initial=self.bytes_done(), file=sys.stderr)

    def report(self) -> None:
        bar = self._bar
        if bar is not None:
            bar.n = self.bytes_done()
            bar.set_postfix_str(f"{self.files_done}/{self.files_total} files")

    def on_stop(self) -> None:
        self.report()
        if self._bar is not None:
            self._bar.close()
            self._bar = None



def make_progress(mode: str, stream: IO[str] | None = None) -> Progress:
    """`auto`: a bar when stderr is a terminal, else log lines."""
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "log"
    if mode == "bar":
        return BarProgress()
    if mode == "json":
        return JsonProgress(stream)
    if mode == "log":
        return LogProgress()
    if mode == "none":
        return NoProgress()
    raise ValueError(f"unknown progress mode {mode!r}; expected one of {', '.join(PROGRESS_MODES)}")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
