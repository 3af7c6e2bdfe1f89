"""`compress_endpoints`: a short spelling of endpoint names in the range notation, for messages (an unknown
endpoint on a 128-GPU cluster listed its first dozen names, not what the cluster has)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from fabricsim.hwmodels import presets
from fabricsim.hwmodels.endpoints import compress_endpoints, expand_endpoints


def test_a_cluster_is_spelled_as_node_ranges() -> None:
    eps = presets.get("cluster-16x8", calibration=None).endpoints()
    assert compress_endpoints(eps) == "node0-15.host0-1, node0-15.gpu0-7, node0-15.nvme0-1"
    assert compress_endpoints(["gpu0", "gpu1", "gpu3", "host"]) == "gpu0-1, gpu3, host"


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["gpu", "host", "nvme"]), st.integers(0, 9)),
                min_size=1, max_size=40, unique=True), st.integers(0, 1 << 30))
def test_the_spelling_names_exactly_the_endpoints(picks, seed) -> None:
    """Whatever the mix (nodes with different local sets, gaps, names without a node), the short spelling
    expands to the same set of names."""
    rng = random.Random(seed)
    names = [f"node{n}.{stem}{i}" if n else f"{stem}{i}" for n, stem, i in picks]
    rng.shuffle(names)
    short = compress_endpoints(names)
    assert sorted(expand_endpoints(short)) == sorted(names)


def test_an_unknown_endpoint_names_what_the_cluster_has() -> None:
    import pytest

    from fabricsim.errors import TopologyError

    with pytest.raises(TopologyError, match=r"it has node0-1\.host0-1, node0-1\.gpu0-3, node0-1\.nvme0-1\)"):
        presets.get("cluster-2x4", calibration=None).resolve("node7.gpu0")
