"""`fileio.read_text`, the one reader of a user's text file: what it says of a file it cannot read, and that it
reads what `Path.read_text` read (newlines), plus a UTF-8 byte-order mark."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabricsim.errors import TopologyError
from fabricsim.hwmodels.fileio import read_text, read_yaml


def test_not_utf8_names_line_and_column_in_characters(tmp_path: Path) -> None:
    # the column counts characters: 'é' (two UTF-8 bytes) before the bad byte is one column
    path = tmp_path / "t.yaml"
    path.write_bytes("a: 1\nnamé: x".encode() + b"\xff\n")
    with pytest.raises(TopologyError, match=r"t\.yaml: cannot read topology file: not UTF-8 text "
                                            r"\(byte 0xff at line 2, column 8\); save it as UTF-8$"):
        read_text(path, TopologyError, "topology file")


def test_missing_file_is_the_callers_error(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"nope\.yaml: cannot read topology file \(No such file or directory\)"):
        read_text(tmp_path / "nope.yaml", TopologyError, "topology file")


def test_newlines_and_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(b'\xef\xbb\xbf{"a":\r\n 1,\r "b": 2}\r\n')
    assert read_text(path, TopologyError, "x") == '{"a":\n 1,\n "b": 2}\n'
    assert read_yaml(path, TopologyError, "x") == {"a": 1, "b": 2}  # json refused the mark ('Unexpected UTF-8 BOM')


def test_lenient_replaces_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_bytes(b"nccl \xe9 out\n")
    assert read_text(path, TopologyError, "log", lenient=True) == "nccl \ufffd out\n"
