"""Reading and writing the project's small structured files (scenarios, topologies, profiles, results).

Two rules every layer follows, kept here once: a file is written to a temporary name and renamed into
place, so an interrupted run never leaves a partial file; and a file that cannot be read or parsed raises the
caller's typed error with the path and one line saying why. `dump_yaml` writes the YAML of plain data
(a topology file) as `yaml.safe_dump` does, byte for byte, twenty times faster.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from fabricsim.errors import OutputExistsError


def check_parent_folder(path: str | os.PathLike) -> None:
    """Raise an OS error naming `path` unless the folder it goes into exists: a named output (a trace, a
    profile, a report folder, a figure folder) is never given folders nobody asked for. Creating the missing
    ones made a typo (`--perfetto /nonexist/dir/x.json`) into a folder tree and a run that 'worked'; the user
    makes a folder, the command makes only the file or the one folder it is told to write.
    (FileNotFoundError or NotADirectoryError, as `open` raises them: the CLI says them in one line.)"""
    parent = Path(path).parent
    if parent.is_dir():
        return
    if parent.exists():
        raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a folder", str(path))
    raise FileNotFoundError(errno.ENOENT, f"the folder {parent} does not exist (create it first)", str(path))


def make_output_folder(path: str | os.PathLike, holds: str) -> Path:
    """Make the one folder a command writes its files into (`traces/`, `plots/STUDY`, a results store), if missing,
    and none above it (`check_parent_folder`); a file in its place is said as such. `holds`: what goes into it."""
    path = Path(path)
    check_parent_folder(path)
    try:
        path.mkdir(exist_ok=True)
    except FileExistsError:  # a file where the folder goes ('File exists' said too little)
        raise NotADirectoryError(errno.ENOTDIR, f"is a file, not a folder: {holds} go into a folder",
                                 str(path)) from None
    return path


def refuse_overwrite(path: str | os.PathLike, force: bool, what: str = "output", *, file: bool = False,
                     inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Raise `OutputExistsError` when `path` exists and `force` is not set: a command that writes a named output
    replaces an existing one only when told (`--force`), so a finished profile or report is never lost to a
    re-run with the same arguments.

    `file=True` (the output is one file): a folder at `path` is refused whatever `force` says, since no flag
    lets a file replace it, and saying so before a long run beats failing after it. `inputs`: files and folders
    the command reads; an output that is one of them, or a folder that holds one, is refused whatever `force` says
    (`simulate in.yaml --perfetto in.yaml --force` replaced the scenario with its own trace). An output whose
    folder does not exist is refused too (`check_parent_folder`), before the run rather than after it."""
    check_parent_folder(path)
    if file and Path(path).is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory: give a file name", str(path))
    for src in inputs:
        if src is None or not (os.path.exists(path) and os.path.exists(src)):
            continue
        if os.path.samefile(path, src) or Path(src).resolve().is_relative_to(Path(path).resolve()):
            # (a folder replaced is deleted whole: `report --out` naming its measurements' folder deleted them)
            raise OutputExistsError(f"{path}: the {what} would replace the input {src}; give the {what} another name")
    if not force and os.path.lexists(path):
        kind = "folder" if Path(path).is_dir() else "file"
        raise OutputExistsError(f"{path}: the {what} {kind} exists; add --force to replace it")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and an atomic rename.

    An OS error names `path` as the user gave it (not the temporary file), with the folder at fault. The folder
    must exist (`check_parent_folder`).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory: give a file name", str(path))
    check_parent_folder(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:  # what `read_text` reads, whatever the locale
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


class _DuplicateKey(ConstructorError):
    """A key given twice in one YAML mapping (`_UniqueKeyLoader`): said as such, not as malformed YAML."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping. PyYAML keeps the last one silently, so a
    component defined twice, or a second `links:` list, would replace the first without a word; the YAML spec
    itself says keys are unique. Merge keys (`<<: *base`) are not duplicates: an explicit key overrides them.

    Checked in `flatten_mapping`, once per mapping node and before its merges are spliced into it: PyYAML flattens
    a merge source in place, so a node read after it was merged somewhere (an anchor that overrides a key of its
    own merge) holds that key twice by then, and checking it there refused valid YAML."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if id(node) not in self._checked:
            self._checked.add(id(node))
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first_line.get(key)
                except TypeError:  # an unhashable key: SafeConstructor names it
                    continue
                if seen is not None:
                    raise _DuplicateKey(None, None, f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                        f"(first on line {seen + 1})")
                first_line[key] = key_node.start_mark.line
        super().flatten_mapping(node)


class _DuplicateJSONKey(Exception):
    """Raised by `_unique_json_object` with the key and the keys of its object (JSON gives the hook no line)."""


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` refusing a key given twice in one JSON object (json keeps the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateJSONKey(key, list(out))
        out[key] = value
    return out


def read_text(path: str | os.PathLike, error: type[Exception], what: str, *, lenient: bool = False) -> str:
    """The text of an input file, read as UTF-8; raise `error` naming the path when it cannot be read.

    Every reader of a user's file (scenarios, topologies, profiles, measurements, request traces, study files)
    comes through here, so each says the same two things the same way: an OS error ("cannot read topology file
    (No such file or directory)"), and a file that is not UTF-8 (saved as Latin-1 or Windows-1252, say), named
    with the line and column of its first bad byte. Left to Python, the second was a 27-line UnicodeDecodeError
    traceback giving a byte offset only. UTF-8 always, not the locale's encoding: a file must read the same on
    every machine. Newlines are read as `Path.read_text` reads them (\r\n and \r become \n), and a UTF-8
    byte-order mark (Windows editors write one) is dropped.

    `lenient`: a byte that is not UTF-8 becomes U+FFFD instead of an error, for a tool's log of which only some
    lines are read (nccl-tests, nvbandwidth output).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8", errors="replace" if lenient else "strict")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        before = data[data.rfind(b"\n", 0, exc.start) + 1:exc.start].decode("utf-8")  # valid: before the first bad byte
        raise error(f"{path}: cannot read {what}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, "
                    f"column {len(before) + 1}); save it as UTF-8") from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.removeprefix("\ufeff")


def read_yaml(path: str | os.PathLike, error: type[Exception], what: str) -> Any:
    """Parse a YAML or JSON file; raise `error` naming the path (and line) when it cannot be read or parsed.

    `.json` files go through the JSON parser: a YAML 1.1 parser reads numbers such as `8e-06` (no decimal
    point, as Python's json writes them) as strings. A key given twice in one mapping is an error naming the key
    (and, in YAML, both lines) instead of the last one winning silently, in every file the project reads
    (topologies, scenarios, profiles).
    """
    path = Path(path)
    text = read_text(path, error, what)
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_unique_json_object)
        except json.JSONDecodeError as exc:
            raise error(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from None
        except _DuplicateJSONKey as exc:
            key, keys = exc.args
            shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
            raise error(f"{path}: duplicate key '{key}' in one JSON object (its keys: {shown})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise error(f"{path}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{path}: malformed YAML/JSON{where}: {problem}") from None


# ---------------------------------------------------------------------------------------- fast YAML writing
# `yaml.safe_dump` builds a node graph and runs a general emitter: 4 s for the 2.5 MB of cluster-512x8. The plain
# data a topology becomes (dicts, lists, and scalars: short names, numbers, booleans, None) needs none of that.
# `dump_yaml` writes it directly in the block style PyYAML chooses, and gives anything it is not certain of to
# PyYAML: a string that might need quoting other than 'x' or line folding (space, colon, quote, non-ASCII, ...),
# a key PyYAML would write as a complex `? key` (empty, or 123 characters and more), a container met twice
# (PyYAML writes an anchor), a subclass (numpy numbers) or a scalar document. tests/test_dump_yaml.py checks byte
# identity on every preset and on generated data.
_STR_TAG = "tag:yaml.org,2002:str"
_SAFE_TEXT = re.compile(r"[A-Za-z0-9_./-]+").fullmatch  # nothing here makes PyYAML fold, escape or double-quote
_RESOLVER = Resolver()
# PyYAML writes a key as a complex key (`? key`) unless the key and its tag, '!!str' even where it is not written,
# are under 128 characters.
_SIMPLE_KEY_MAX = 128 - len("!!str")


class _Unsupported(Exception):
    """Raised inside `_FastYAML` for data whose PyYAML form it does not write; `dump_yaml` falls back."""


def _str_scalar(text: str) -> str:
    """`text` as PyYAML writes it in block context: plain where that reads back as the same string, else 'quoted'."""
    if not _SAFE_TEXT(text):
        if text == "":
            return "''"
        raise _Unsupported
    # Plain unless it would read back as another type (true, null, 0755, 2001-01-01, .5), or starts like a
    # document marker or a block entry (PyYAML's analyze_scalar); ASCII without spaces or quotes needs no escapes.
    plain = (_RESOLVER.resolve(ScalarNode, text, (True, False)) == _STR_TAG
             and not text.startswith(("---", "...")) and text != "-")
    return text if plain else f"'{text}'"


def _float_scalar(x: float) -> str:
    """PyYAML's SafeRepresenter.represent_float: .nan, .inf, -.inf, else repr with a '.0' before a bare exponent."""
    if x != x:
        return ".nan"
    if x in (float("inf"), float("-inf")):
        return ".inf" if x > 0 else "-.inf"
    text = repr(x).lower()
    return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text


class _FastYAML:
    """One dump: the output lines and the containers seen (a second sighting would be an anchor in PyYAML)."""

    def __init__(self, sort_keys: bool) -> None:
        self.sort_keys = sort_keys
        self.lines: list[str] = []
        self.seen: set[int] = set()
        self.strings: dict[str, str] = {}  # names repeat (kinds, endpoints): resolve each once

    def scalar(self, value: Any) -> str:
        kind = type(value)
        if kind is str:
            out = self.strings.get(value)
            if out is None:
                out = self.strings[value] = _str_scalar(value)
            return out
        if kind is float:
            return _float_scalar(value)
        if kind is bool:
            return "true" if value else "false"
        if kind is int:
            return str(value)
        if value is None:
            return "null"
        raise _Unsupported

    def node(self, value: Any, indent: int, lead: str) -> None:
        """Write `value` whose first line starts with `lead` (a key and ': ', or '- ' marks) at `indent`."""
        kind = type(value)
        if kind is not dict and kind is not list:
            self.lines.append(lead + self.scalar(value))
            return
        if id(value) in self.seen:  # empty ones too: PyYAML anchors any container it meets twice
            raise _Unsupported
        self.seen.add(id(value))
        if not value:
            self.lines.append(lead + ("{}" if kind is dict else "[]"))
        elif kind is dict:
            self.mapping(value, indent, lead)
        else:
            self.sequence(value, indent, lead)

    def mapping(self, d: dict, indent: int, lead: str) -> None:
        items = sorted(d.items()) if self.sort_keys else d.items()
        pad = " " * indent
        for k, v in items:
            if type(k) is not str or not k or len(k) >= _SIMPLE_KEY_MAX:
                raise _Unsupported
            key = f"{lead}{self.scalar(k)}:"
            lead = pad
            kind = type(v)
            if v and (kind is dict or kind is list):
                self.lines.append(key)
                # a mapping inside a mapping is indented; a list is not (PyYAML's indentless sequence)
                if kind is dict:
                    self.node(v, indent + 2, pad + "  ")
                else:
                    self.node(v, indent, pad)
            else:
                self.node(v, indent, key + " ")

    def sequence(self, items: list, indent: int, lead: str) -> None:
        pad = " " * indent
        for item in items:
            self.node(item, indent + 2, lead + "- ")
            lead = pad


def dump_yaml(data: Any, *, sort_keys: bool = True) -> str:
    """`yaml.safe_dump(data, sort_keys=sort_keys)`, byte for byte, written directly where the data is plain
    (see above) and by PyYAML otherwise."""
    kind = type(data)
    if kind is dict or kind is list:
        writer = _FastYAML(sort_keys)
        try:
            writer.node(data, 0, "")
        except (_Unsupported, RecursionError):
            pass
        else:
            return "\n".join(writer.lines) + "\n"
    return yaml.safe_dump(data, sort_keys=sort_keys)
