"""Which files a batch job reads: folders (recursive, hidden files left out), globs and files named
by the person running it, and list files (`--files-from`), whose lines are paths relative to the
list file's folder that must lie inside it: an absolute path, `..` or a link leading out of that
folder is left out with one message, the same whether or not such a file exists, so that a list
from someone else can neither read nor reveal other files.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import InvalidRequestError

log = logging.getLogger("glmflash.jobs.inputs")
MAX_LINE = 4096  # bytes in one line of a list file (PATH_MAX on Linux)


def expand_inputs(
    inputs: Iterable[str], files_from: str | None = None, left_out: list[str] | None = None
) -> list[Path]:
    """Folders, globs and files, plus a list file's lines; sorted, unique. A list line that is
    refused is added to `left_out` with the reason (logged as a warning when it is None)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += [p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path))]
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(item):
            found += [
                Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True) if Path(p).is_file()
            ]
        else:
            raise InvalidRequestError(f"{item}: no such file, folder or matching files.")
    if files_from:
        refused: list[str] = []
        found += read_list(Path(files_from).expanduser(), refused)
        for message in refused:
            if left_out is None:
                log.warning("left out: %s", message)
            else:
                left_out.append(message)
    unique = {str(p.resolve()) if p.exists() else str(p): p for p in found}
    return [unique[key] for key in sorted(unique)]


def read_list(path: Path, refused: list[str]) -> list[Path]:
    """The paths a list file names (one a line; blank lines and # comments skipped), resolved
    inside its folder; each line that cannot be used goes to `refused` with the reason."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise InvalidRequestError(f"Cannot read the list {path}: {exc.strerror or exc}.") from None
    root = path.parent.resolve()
    found: list[Path] = []
    with f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), 1):
            where = f"{path.name} line {number}"
            if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                while (rest := f.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                    pass
                refused.append(f"{where} is longer than {MAX_LINE:,} bytes; it was not read.")
                continue
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                refused.append(f"{where} is not UTF-8 text.")
                continue
            if not line or line.startswith("#"):
                continue
            problem = _inside(root, line)
            if isinstance(problem, str):
                refused.append(f"{where}: {problem}")
            else:
                found.append(problem)
    return found


def _inside(root: Path, line: str) -> Path | str:
    """The line's resolved path inside `root`, or why it is refused."""
    if "\0" in line:
        return "the path holds a NUL byte."
    outside = (
        f"{line[:120]!r} is not inside the list file's folder; list files by paths relative to "
        "that folder, within it (no absolute path, .. or link that leads out of it)."
    )  # the same words whether or not such a file exists
    candidate = root / line  # an absolute line stays itself
    if not Path(os.path.normpath(candidate)).is_relative_to(root):
        return outside  # told by the text alone: nothing outside is looked at
    try:
        resolved = candidate.resolve()
    except OSError as exc:
        return f"{line[:120]!r} cannot be read: {exc.strerror or exc}."
    return resolved if resolved.is_relative_to(root) else outside


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)
