"""What the page may read from disk: only files uploaded to it, in one folder of its own that is
kept within a size and an age bound.

- `folder(settings)`: the process's upload folder (GRADIO_TEMP_DIR, set before any component is
  made, so Gradio's uploads and its output cache both land there); fresh and private (0700).
- `uploaded(file)`: a page input's path, refused unless it lies inside that folder (after
  symlinks), with one message whether or not the file exists.
- `guard(blocks, settings)`: turn on Gradio's own path checks, which it applies only after
  `launch()` (`processing_utils._check_allowed` returns early unless `blocks.has_launched`, and
  `mount_gradio_app` never sets it), and block the folders that hold secrets and weights.
- `Janitor`: deletes files over the age bound, then the oldest over the size budget, every minute;
  `UploadBudget` (ASGI) refuses an upload that would pass the budget before reading it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

from ..errors import InvalidRequestError

NOT_UPLOADED = "That file was not uploaded to this page: attach it again."
SWEEP_EVERY_S = 60.0
_lock = threading.RLock()
_folder: Path | None = None
_janitor: Janitor | None = None


def folder(settings) -> Path:
    """The page's upload folder, chosen once per process: Gradio reads GRADIO_TEMP_DIR when each
    component and the app are made, so every page in the process must share one."""
    global _folder
    with _lock:
        if _folder is None:
            parent = settings.server.upload_dir or None
            if parent:
                Path(parent).mkdir(parents=True, exist_ok=True)
            _folder = Path(tempfile.mkdtemp(prefix="glmflash-uploads-", dir=parent)).resolve()
            os.environ["GRADIO_TEMP_DIR"] = str(_folder)
        return _folder


def uploaded(file) -> Path:
    """A Gradio input's file (a dict with "path", or the path itself) as a path inside the upload
    folder; anything else, named by a visitor, is refused without saying whether it exists."""
    raw = file.get("path") if isinstance(file, dict) else file
    if _folder is None or not isinstance(raw, str | os.PathLike) or "\x00" in str(raw):
        raise InvalidRequestError(NOT_UPLOADED)
    try:
        path = Path(raw).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise InvalidRequestError(NOT_UPLOADED) from None
    if not path.is_relative_to(_folder) or not path.is_file():
        raise InvalidRequestError(NOT_UPLOADED)
    return path


def blocked(settings) -> list[str]:
    """Folders and files no page endpoint may read or serve, even through Gradio's own output
    paths (the working folder and the temp folder): the home folder (SSH and cloud keys, the
    Jupyter runtime file with its token, the hub cache), the model, adapters, cache, key files and
    the audit log. The upload and temp folders stay open, wherever they are."""
    home = Path.home().resolve()
    candidates = [
        home,
        Path(settings.model.cache_dir),
        Path(settings.model.name),
        Path(settings.server.api_keys),
        Path(settings.server.audit_log),
        *(Path(part.partition("=")[2] or part) for part in settings.model.adapter.split(",") if part),
        *(Path(os.environ[v]) for v in ("JUPYTER_RUNTIME_DIR", "HF_HOME") if os.environ.get(v)),
        Path("/etc"),
        Path("/proc"),
        Path("/root"),
    ]
    # The page writes its own outputs (drawn boxes, downloads, reports) to the temp folder.
    open_folders = [p for p in (_folder, Path(tempfile.gettempdir()).resolve()) if p is not None]
    paths = []
    for candidate in candidates:
        if not str(candidate) or str(candidate) == ".":
            continue
        with contextlib.suppress(OSError):
            path = candidate.expanduser().resolve()
            if path.exists() and not any(p.is_relative_to(path) for p in open_folders):
                paths.append(str(path))
    return sorted(set(paths))


def guard(blocks, settings) -> None:
    """What `launch()` would set, on a page mounted with `mount_gradio_app`: Gradio then accepts
    an input file only from its upload folder and serves none from the blocked paths."""
    blocks.has_launched = True
    blocks.blocked_paths = sorted({*blocks.blocked_paths, *blocked(settings)})


class Janitor:
    """Keeps the upload folder within `max_bytes` and `max_age_s`, sweeping on a daemon thread;
    files present when it starts (the examples Gradio cached while building the page) stay."""

    def __init__(self, path: Path, max_bytes: int, max_age_s: float):
        self.path, self.max_bytes, self.max_age_s = path, max_bytes, max_age_s
        self.keep = {str(p) for p in path.rglob("*") if p.is_file()}
        self.used = 0
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glmflash-uploads", daemon=True)
        self.sweep()
        self._thread.start()

    def sweep(self, now: float | None = None) -> int:
        """Delete what is over the bounds (oldest first); returns the bytes the folder holds. A
        file's age runs from when it was written here (its ctime: Gradio's copies keep the
        source's mtime)."""
        now = time.time() if now is None else now
        files = []
        for path in self.path.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    stat = path.stat()
                    files.append((stat.st_ctime, stat.st_size, path))
        total = 0
        for made, size, path in sorted(files, reverse=True):  # newest first: they are kept
            old = now - made > self.max_age_s
            if str(path) not in self.keep and (old or total + size > self.max_bytes):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            total += size
        for path in sorted(self.path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()  # only when empty
        self.used = total
        return total

    def room(self) -> int:
        """Bytes that may still be written (after a sweep when the folder looks full)."""
        if self.used >= self.max_bytes:
            self.sweep()
        return max(0, self.max_bytes - self.used)

    def charge(self, size: int) -> None:
        self.used += size

    def _run(self) -> None:
        while not self._wake.wait(SWEEP_EVERY_S):
            with contextlib.suppress(Exception):  # a sweep never ends the thread
                self.sweep()


def janitor(settings) -> Janitor:
    """The process's one janitor for its upload folder (started with the first page)."""
    global _janitor
    with _lock:
        if _janitor is None:
            _janitor = Janitor(
                folder(settings), settings.server.upload_max_bytes, settings.server.upload_max_age
            )
        return _janitor


class UploadBudget:
    """ASGI middleware for the page's upload route: an upload whose declared size does not fit
    in what is left of the disk budget is refused before its body is read (one without a
    declared size is refused as well: a browser always declares it)."""

    def __init__(self, app, *, janitor: Janitor, prefix: str = ""):
        self.app, self.janitor, self.route = app, janitor, f"{prefix.rstrip('/')}/gradio_api/upload"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") != self.route or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"").decode()
        if not declared.isdigit():
            return await _reply(send, 411, "Uploads must declare their size (Content-Length).")
        if int(declared) > self.janitor.room():
            gb = self.janitor.max_bytes / 1e9
            return await _reply(
                send, 413, f"The server's upload space ({gb:.1f} GB) is full: try again later."
            )
        self.janitor.charge(int(declared))
        return await self.app(scope, receive, send)


async def _reply(send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
