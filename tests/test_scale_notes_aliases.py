"""Two refusals to stay silent: shared-pool:pull-on-publish says before a sync that will take long and much memory
(a 4,096-GPU sync declared for ~100 s and 12.7 GB with no note), from the count of copies it declares, not from a
timing; and a topology file's alias must name an endpoint (a GPU, host memory or NVMe), not a CPU, switch or NIC,
which loaded fine and failed only at the first copy that used it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabricsim.cli import main
from fabricsim.errors import TopologyError
from fabricsim.hwmodels.topofile import load_topology_file
from fabricsim.workloads import models
from fabricsim.workloads.placement import FSDPLayout, MegatronLayout, RolloutLayout, reshard
from fabricsim.workloads.weightsync import SyncSetup, get, shared_pool
from fabricsim.workloads.weightsync.cluster_layout import setup_of


# ---------------------------------------------------------------------------------------- pull-on-publish's note
def _copies(setup: SyncSetup) -> int:
    """The pulls a pull-on-publish sync declares, counted from the plan here (not by the code under test)."""
    plan = reshard(setup.model, setup.trainer, setup.rollout)
    return int((plan.matrix > 0).sum())


def test_pull_on_publish_speaks_from_two_to_the_twenty_copies():
    """The cluster layout trains under FSDP: N/2 x N/2 copies. 2,048 GPUs (2^20 copies, 28 s and 3.3 GiB measured
    on the 2-core VM) get the note, with the count, a time, a size and the alternative; 1,024 (2^18) do not."""
    pool = get("shared-pool:pull-on-publish")
    big, below = (setup_of({"model": "Qwen3-235B-A22B", "gpus": n}) for n in (2048, 1024))
    assert pool.pull_copies(big) == _copies(big) == 1 << 20 == shared_pool.PULL_NOTE_COPIES
    note = pool.scale_note(big)
    assert note.startswith("shared-pool:pull-on-publish: 1,024 readers") and "1,048,576 copies" in note
    assert "about 27 s and 3.3 GiB" in note and "shared-pool:relay" in note
    assert pool.scale_note(below) == ""
    # the other modes declare other copies; a delta is refused before any run
    assert get("shared-pool:relay").scale_note(big) == get("shared-pool:zero-copy").scale_note(big) == ""


def test_the_note_counts_the_plans_pairs_not_trainers_times_readers(monkeypatch):
    """At the threshold the note fires and one copy short of it not; a Megatron trainer's reader pulls from the few
    GPUs that hold its slice, so the same GPUs under it stay quiet where FSDP's all-to-all speaks (the threshold is
    moved to a small box's count: the rule, not the measured size, is under test)."""
    topo = setup_of({"model": "Qwen3-235B-A22B", "gpus": 16}).topology
    llama = models.get("Llama-3-8B")
    tr, ro = [f"node0.gpu{i}" for i in range(8)], [f"node1.gpu{i}" for i in range(8)]
    fsdp = SyncSetup(topo, llama, FSDPLayout(tr), RolloutLayout(ro, tp=8))
    megatron = SyncSetup(topo, llama, MegatronLayout(tr, tp=8), RolloutLayout(ro, tp=8))
    pool = get("shared-pool:pull-on-publish")
    n = _copies(fsdp)
    assert n == 64 and _copies(megatron) < n
    monkeypatch.setattr(shared_pool, "PULL_NOTE_COPIES", n)
    assert "64 copies" in pool.scale_note(fsdp) and pool.scale_note(megatron) == ""
    monkeypatch.setattr(shared_pool, "PULL_NOTE_COPIES", n + 1)
    assert pool.scale_note(fsdp) == ""


def test_the_sync_cli_prints_the_note_before_the_run(monkeypatch, capsys):
    """The CLI prints a strategy's scale note on stderr before it simulates (nothing else needed for this one)."""
    import sys

    from fabricsim.workloads.weightsync import cli as sync_cli
    from fabricsim.workloads.weightsync.base import SyncResult

    monkeypatch.setattr(shared_pool, "PULL_NOTE_COPIES", 1)

    def no_run(setup, strategy, **kw):
        print("SIMULATED", file=sys.stderr)
        return SyncResult(strategy.label, feasible=False, reason="not run in this test")

    monkeypatch.setattr(sync_cli, "simulate_sync", no_run)
    main(["sync", "Llama-3-8B", "shared-pool:pull-on-publish", "--trainer", "gpu0-3", "--rollout", "gpu4-7",
          "--samples", "0"])
    err = capsys.readouterr().err
    assert "note: shared-pool:pull-on-publish: 4 readers" in err and err.index("note: shared") < err.index("SIMULATED")


# ---------------------------------------------------------------------------------------- aliases to endpoints
BOX = """\
name: box
components:
  host0: {kind: host}
  cpu0: {kind: cpu}
  gpu0: {kind: gpu, model: H100}
  gpu1: {kind: gpu, model: H100}
  nvme0: {kind: nvme}
  sw0: {kind: pcie-switch}
  nic0: {kind: nic}
links:
  - {between: [host0, cpu0], kind: dram, GBps: 230}
  - {between: [sw0, cpu0], kind: pcie, gen: 5, lanes: 16}
  - {between: [gpu0, sw0], kind: pcie, gen: 5, lanes: 16}
  - {between: [gpu1, sw0], kind: pcie, gen: 5, lanes: 16}
  - {between: [nvme0, cpu0], kind: nvme, GBps: 7}
  - {between: [nic0, sw0], kind: pcie, gen: 5, lanes: 16}
"""


@pytest.mark.parametrize("target, kind", [("cpu0", "cpu"), ("sw0", "pcie-switch"), ("nic0", "nic")])
def test_an_alias_to_no_endpoint_is_refused_naming_it(tmp_path: Path, capsys, target: str, kind: str):
    """One line, exit status 2, naming the file, the alias, its target and what that is."""
    path = tmp_path / "box.yaml"
    path.write_text(BOX + f"aliases: {{cpu: {target}}}\n")
    assert main(["topo", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"box.yaml: aliases.cpu: '{target}' is a {kind}, not an endpoint" in err, err
    with pytest.raises(TopologyError, match="aliases.cpu"):
        load_topology_file(path)


def test_aliases_to_gpus_host_memory_and_nvme_load(tmp_path: Path):
    """Those are what copies start and end at, and what aliases are read for."""
    path = tmp_path / "box.yaml"
    path.write_text(BOX + "aliases: {host: host0, first: gpu0, disk: nvme0}\n")
    t = load_topology_file(path)
    assert [t.resolve(a) for a in ("host", "first", "disk")] == ["host0", "gpu0", "nvme0"]
    assert t.path("first", "host").src == "gpu0"
