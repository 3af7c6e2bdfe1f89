"""What a KV policy is: where each sequence's KV lives, what a step reads and moves because of it.

The serving loop (`fabricsim.workloads.serving`) owns batching, admission, preemption and timing; a policy
only answers questions about KV placement, through a few hooks:

- `hbm_bytes(seq, kv_tokens)`: per-GPU HBM the sequence's own KV occupies (admission and preemption use it);
- `reserved_bytes()`: fixed per-GPU HBM the policy holds (prefetch buffers, a prefix cache);
- `on_admit(seq)`: prefill tokens a cache hit lets the sequence skip, and bytes to fetch first;
- `add_seq_work(work, seq, ctx, new)`: the HBM reads/writes, host fetches and write-backs one sequence adds to
  a step in which it has `ctx` cached tokens and computes `new` tokens;
- `add_batch_work(work, items)`: work shared by the batch (a shared prefix read once per batch);
- `after_step(items)`: background work started after a step (asynchronous compression).

Sizes come from the instance's `KVLayout`; a policy never does its own byte arithmetic beyond fractions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ..requests import Request

if TYPE_CHECKING:
    import simpy

    from ..kvsize import KVLayout


@dataclass
class Seq:
    """A request in service. `kv_tokens`: tokens whose KV is stored (prompt + generated - 1 once decoding)."""

    req: Request
    prefill_target: int = 0   # tokens the prefill must reach: the prompt (+ generated tokens after recompute)
    prefilled: int = 0
    generated: int = 0
    kv_tokens: int = 0
    shared_tokens: int = 0    # tokens of the context whose KV the policy keeps outside this sequence (shared prefix)
    shared_key: str | None = None
    compressed_src: int = 0   # tokens compressed in the background (async compression)
    compressing: bool = False
    admitted_s: float = float("nan")
    first_token_s: float = float("nan")
    finish_s: float = float("nan")
    kv_ready_s: float = float("nan")  # pd-disaggregation: when the last of its KV reached the decode side
    preemptions: int = 0
    swapped_bytes: float = 0.0  # per GPU, while swapped out
    order: int = 0              # admission order (preemption victims are the latest admitted)
    instance: Any = None
    decode_instance: Any = None  # pd-disaggregation: where this sequence decodes
    pushes: list = field(default_factory=list)  # pd-disaggregation: each prefill step's KV pushes it is part of

    @property
    def prefilling(self) -> bool:
        return self.prefilled < self.prefill_target

    @property
    def remaining_output(self) -> int:
        return self.req.output_tokens - self.generated

    @property
    def max_kv_tokens(self) -> int:
        return self.req.prompt_tokens + self.req.output_tokens - 1


@dataclass
class StepWork:
    """Per-GPU work of one step (or of a run of `steps` identical-shape decode steps).

    hbm_bytes: what the kernels read and write in HBM (weights, KV held in HBM, new KV);
    fetch_bytes / fetch_copies: host -> GPU, needed layer group by layer group before that group computes;
    writeback_bytes / writeback_copies: GPU -> host, issued as each layer group finishes;
    pushes: pd-disaggregation, {destination GPU list index: bytes} sent to another instance per layer group.
    """

    flops: float = 0.0
    hbm_bytes: float = 0.0
    kv_read_bytes: float = 0.0  # the KV part of hbm_bytes + fetch_bytes (reported per generated token)
    fetch_bytes: float = 0.0
    fetch_copies: int = 0
    writeback_bytes: float = 0.0
    writeback_copies: int = 0
    extra_s: float = 0.0       # GPU time that is neither FLOPs nor HBM (decompression kernels, fixed costs)
    steps: int = 1
    pushes: dict[Any, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepItem:
    """One sequence's share of a step: `ctx` tokens already cached, `new` tokens computed now."""

    seq: Seq
    ctx: int
    new: int



class ServingInstance(Protocol):
    """What a policy may use of the serving instance it is bound to: the seam between the serving loop
    (`workloads.serving.Instance`, which satisfies it) and the policies, typed so neither reaches into the
    other's internals."""

    layout: KVLayout
    kv_budget_total: float  # KV bytes per GPU before any policy reserve
    running: list[Seq]      # sequences in the running batch

    @property
    def layer_groups(self) -> int:
        """Layer groups a step's host fetches are split into (the config's `layer_groups`)."""
        ...

    def move_all(self, direction: str, nbytes_per_gpu: float, copies: float, tag: str,
                 after: Iterable[simpy.Event] = ()) -> simpy.Event:
        """The same copy on every GPU of the instance, to ('d2h') or from ('h2d') its nearest host."""
        ...

    def run_background(self, flops: float, hbm_bytes: float, tag: str) -> simpy.Event:
        """A kernel on every GPU of the instance beside the decode steps (e.g. compression)."""
        ...

    def record_memory(self) -> None:
        """Bring the instance's memory accounting up to date after the policy changed what it holds."""
        ...

class KVPolicy:
    """Base policy = `hbm-only`: every sequence's KV lives in HBM; preemption swaps or recomputes."""

    name: ClassVar[str] = "hbm-only"
    # Decode steps with an unchanged batch can be merged into one run (no traffic or state between steps).
    coalescible: ClassVar[bool] = True
    # Layer groups fetched ahead of compute (host fetches): 0 = fetch then compute, 1 = double buffering.
    prefetch_depth: int = 0
    # Acts only on requests' shared prefixes (`Request.prefix_id`, `prefix_tokens`): without any it runs exactly as
    # hbm-only, which `fabricsim serve` says in a note rather than print hbm-only's numbers under this name.
    shares_prefixes: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        if params:
            from .params import PolicyError

            raise PolicyError(f"policy '{self.name}' takes no parameter(s) {', '.join(sorted(params))}")

    def bind(self, instance: ServingInstance) -> None:
        """Called once per serving instance before the run (a policy object serves one instance)."""
        self.instance = instance
        self.layout: KVLayout = instance.layout

    def reserved_bytes(self) -> float:
        """Fixed per-GPU HBM the policy holds for the whole run (taken off the KV budget up front)."""
        return 0.0

    def shared_bytes(self) -> float:
        """Per-GPU HBM of KV the policy holds for several sequences at once (a prefix cache), right now."""
        return 0.0

    def own_tokens(self, seq: Seq, kv_tokens: int) -> int:
        return max(0, kv_tokens - seq.shared_tokens)

    def hbm_bytes(self, seq: Seq, kv_tokens: int) -> float:
        return self.layout.bytes_per_gpu(self.own_tokens(seq, kv_tokens))

    def host_bytes(self, seq: Seq, kv_tokens: int) -> float:
        """Per-GPU bytes of this running sequence's KV kept in host memory."""
        return 0.0

    def host_shared_bytes(self) -> float:
        """Per-GPU bytes of shared KV (evicted prefixes) the policy keeps in host memory."""
        return 0.0

    def on_admit(self, seq: Seq) -> tuple[int, float]:
        """(prompt tokens the sequence need not prefill, per-GPU bytes to fetch from host before it runs)."""
        return 0, 0.0

    def read_bytes(self, seq: Seq, ctx: int) -> float:
        """Per-GPU KV bytes attention reads for this sequence at context `ctx` (unpaged: whole tokens)."""
        return self.layout.bytes_per_gpu(ctx, paged=False)

    def add_seq_work(self, work: StepWork, seq: Seq, ctx: int, new: int) -> None:
        read = self.read_bytes(seq, ctx)
        write = self.layout.bytes_per_gpu(new, paged=False)
        work.hbm_bytes += read + write
        work.kv_read_bytes += read

    def add_batch_work(self, work: StepWork, items: list[StepItem]) -> None:
        return None

    def after_step(self, items: list[StepItem]) -> None:
        return None

    def release(self, seq: Seq) -> None:
        """The sequence finished or was preempted by recompute: drop what the policy holds for it."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name}


@runtime_checkable
class SplitsRoles(Protocol):
    """A policy that gives instances different roles (`pd-disaggregation`: prefill and decode) instead of running
    every instance alike. The serving system asks it how many instances take each role and which policy each
    of them runs; a policy without these two methods has all instances `colocated`, each with its own copy.
    Written as a Protocol so the contract is one declaration, not a `hasattr` probe for one of its methods."""

    def role_counts(self, instances: int) -> dict[str, int]:
        """How many instances take each role, in GPU order; may ignore the config's `instances`."""
        ...

    def instance_policy(self, role: str) -> KVPolicy:
        """A fresh policy for one instance of `role`."""
        ...
