"""`dump_yaml` is `yaml.safe_dump`, byte for byte: on every preset (where it must not need PyYAML at all) and on
generated nested data, including strings and keys it has to hand to PyYAML."""

from __future__ import annotations

import string
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fabricsim.hwmodels import fileio, presets
from fabricsim.hwmodels.fileio import dump_yaml
from fabricsim.hwmodels.nvsmi import topology_from_topo_m
from fabricsim.hwmodels.topofile import topology_to_dict

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = [*presets.PRESETS, "cluster-2x8", "cluster-4x8-leaf-spine", "cluster-3x4-rail-h200"]


def _refuse(*args: object, **kwargs: object) -> str:
    raise AssertionError("dump_yaml fell back to yaml.safe_dump")


def fast_only(data: object, sort_keys: bool) -> str:
    """`dump_yaml` with PyYAML's dumper out of reach: fails where the fast path would fall back."""
    original = fileio.yaml.safe_dump
    fileio.yaml.safe_dump = _refuse
    try:
        return dump_yaml(data, sort_keys=sort_keys)
    finally:
        fileio.yaml.safe_dump = original


@pytest.mark.parametrize("name", TOPOLOGIES)
@pytest.mark.parametrize("sort_keys", [False, True])
def test_presets_are_byte_identical(name: str, sort_keys: bool) -> None:
    data = topology_to_dict(presets.load(name, calibration=None))
    assert fast_only(data, sort_keys) == yaml.safe_dump(data, sort_keys=sort_keys)


@pytest.mark.parametrize("machine", ["h100x1", "h200x1", "h200x2"])
def test_imported_topologies_are_byte_identical(machine: str) -> None:
    """What `fabricsim topo import` writes: host caps with classes and endpoints besides links."""
    text = (ROOT / "validate" / "data" / machine / "topo_m.txt").read_text()
    data = topology_to_dict(topology_from_topo_m(text, gpu=machine[:4].upper(), name=machine))
    assert fast_only(data, sort_keys=False) == yaml.safe_dump(data, sort_keys=False)


def test_a_large_cluster_is_fast() -> None:
    """The reason it exists: PyYAML takes about 4 s for cluster-512x8 (2.5 MB); this takes a fraction of one."""
    data = topology_to_dict(presets.load("cluster-512x8", calibration=None))
    started = time.perf_counter()
    text = fast_only(data, sort_keys=False)
    assert time.perf_counter() - started < 1.0
    assert text.startswith("name: cluster-512x8\ncomponents:\n")


@pytest.mark.parametrize("data", [
    {}, [], [{}], [[]], {"a": []}, {"a": {}}, [[[1]]], [[1, 2], [3]], [{"a": [1, 2]}], [{"a": {"b": 1}}],
    {"a": {"b": [1]}}, {"a": [[]]}, [None, True, False, 0, -7, 10**40, 1.5, -0.0, 5e-324, 1e17, 1e-5,
                                     float("nan"), float("inf"), float("-inf")],
    {"a": ""}, {"a": "-"}, {"a": "-x"}, {"a": "---x"}, {"a": "...x"}, {"a": "."}, {"a": "1e5"}, {"a": "0755"},
    {"a": "1_000"}, {"a": ".5"}, {"a": "0x1F"}, {"a": "2001-01-01"}, {"a": "true"}, {"a": "Yes"}, {"a": "NULL"},
    {"a": ".inf"}, {"true": 1, "null": 2, "7": 3}, {"a": "x" * 200}, {"k" * 122: 1}, {"1" * 122: 1},
], ids=lambda d: repr(d)[:40])
def test_plain_data_is_written_without_pyyaml(data: object) -> None:
    assert fast_only(data, sort_keys=False) == yaml.safe_dump(data, sort_keys=False)


SHARED, SHARED_EMPTY, SHARED_DICT = [1, 2], [], {}


@pytest.mark.parametrize("data", [
    "a", 3, None, {"": 1}, {"k" * 123: 1}, {"1" * 123: 1}, {"a": "~"}, {1: "a"}, {None: 1}, {"a": "two words"},
    {"a": "a: b"}, {"a": "it's"}, {"a": "é"}, {"a": "line\nbreak"}, {"a": " lead"}, {"a": "#x"},
    {"a": "x" * 50 + " " + "y" * 50},
    {"a": SHARED, "b": SHARED}, {"a": SHARED_EMPTY, "b": [SHARED_EMPTY]}, [SHARED_DICT, {"c": SHARED_DICT}],
    {"a": (1, 2)},
], ids=lambda d: repr(d)[:40])
def test_what_it_does_not_write_goes_to_pyyaml(data: object) -> None:
    assert dump_yaml(data, sort_keys=False) == yaml.safe_dump(data, sort_keys=False)


# Text that is often plain and sometimes must be quoted: names, numbers, booleans and dates written as text, and
# now and then a character the fast path gives to PyYAML.
NAME_CHARS = string.ascii_letters + string.digits + "_.-/"
names = st.one_of(
    st.text(NAME_CHARS, max_size=12),
    st.text(NAME_CHARS, min_size=118, max_size=126),  # across the longest key PyYAML writes as a simple key
    st.sampled_from(["true", "False", "on", "null", "~", "0755", "0x1f", "1_0", "1e5", "1.5", ".5", ".inf",
                     "2001-01-01", "-", "---", "...", "nvlink", "node0.gpu7", "y", "n", "<<", "="]),
    st.text(max_size=6),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    names)
nested = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(names, inner, max_size=4)), max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(data=st.one_of(st.dictionaries(names, nested, max_size=5), st.lists(nested, max_size=5)),
       sort_keys=st.booleans())
def test_generated_data_is_byte_identical(data: object, sort_keys: bool) -> None:
    assert dump_yaml(data, sort_keys=sort_keys) == yaml.safe_dump(data, sort_keys=sort_keys)


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.text(NAME_CHARS, min_size=1, max_size=12),
                            st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                                   st.text(NAME_CHARS, max_size=12)),
                                         lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(NAME_CHARS, min_size=1,
                                                                                         max_size=12),
                                                                                 inner, max_size=4)),
                                         max_leaves=25),
                            max_size=5))
def test_generated_plain_data_needs_no_pyyaml(data: dict) -> None:
    """Data of the kinds a topology holds is written by the fast path itself, and still byte-identical."""
    assert fast_only(data, sort_keys=False) == yaml.safe_dump(data, sort_keys=False)
