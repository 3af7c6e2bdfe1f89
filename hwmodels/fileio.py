"""Reading and writing the project's small structured files (scenarios, topologies, profiles, results).

Two rules every layer follows, kept here once: a file is written to a temporary name and renamed into
place, so an interrupted run never leaves a partial file; and a file that cannot be read or parsed raises the
caller's typed error with the path and one line saying why.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import yaml

from fabricsim.errors import OutputExistsError


def refuse_overwrite(path: str | os.PathLike, force: bool, what: str = "output", *, file: bool = False) -> None:
    """Raise `OutputExistsError` when `path` exists and `force` is not set: a command that writes a named output
    replaces an existing one only when told (`--force`), so a finished profile or report is never lost to a
    re-run with the same arguments.

    `file=True` (the output is one file): a folder at `path` is refused whatever `force` says, since no flag
    lets a file replace it, and saying so before a long run beats failing after it."""
    if file and Path(path).is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory: give a file name", str(path))
    if not force and os.path.lexists(path):
        kind = "folder" if Path(path).is_dir() else "file"
        raise OutputExistsError(f"{path}: the {what} {kind} exists; add --force to replace it")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and an atomic rename.

    An OS error names `path` as the user gave it (not the temporary file), with the folder at fault.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory: give a file name", str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # `--trace out/t.json` in a fresh checkout just works
        except FileExistsError as exc:
            raise NotADirectoryError(errno.ENOTDIR, f"{exc.filename} is a file, not a folder", str(path)) from None
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not land before the bytes do
        os.replace(tmp, path)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.filename not in (None, str(path), str(tmp)):
            why += f" ({exc.filename})"
        raise type(exc)(exc.errno, why, str(path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def read_yaml(path: str | os.PathLike, error: type[Exception], what: str) -> Any:
    """Parse a YAML or JSON file; raise `error` naming the path (and line) when it cannot be read or parsed.

    `.json` files go through the JSON parser: a YAML 1.1 parser reads numbers such as `8e-06` (no decimal
    point, as Python's json writes them) as strings.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise error(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{path}: malformed YAML/JSON{where}: {problem}") from None
