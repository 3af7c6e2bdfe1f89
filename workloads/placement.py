"""Placement and resharding: which trainer GPU holds which slice of each tensor, which slice each rollout GPU
needs, and therefore which bytes go from which trainer GPU to which rollout GPU.

Trainer layouts:
- `FSDPLayout`: FSDP2 / ZeRO-3 style, every tensor split along dim 0 into N near-equal row blocks, one per GPU.
- `MegatronLayout`: TP x PP x DP ranks (TP fastest, then DP, then PP, Megatron's default order); column-parallel
  weights split on dim 0, row-parallel on dim 1, norms and routers replicated; layers spread over PP stages
  (embedding on the first, final norm and LM head on the last); with EP > 1 routed experts are spread whole over
  EP ranks of a stage (expert-TP 1) and replicated over the remaining expert-DP ranks.
Rollout layout (`RolloutLayout`): engines of TP degree k on a list of GPUs (vLLM / SGLang conventions: GQA KV
heads split when k divides them, otherwise each rank keeps the one KV head it serves), optionally with routed
experts spread whole over the engine's ranks (expert parallel).

The plan (`reshard`) is exact to the element: shards are boxes (one interval per dim), the bytes moved from a
trainer shard to a rollout shard are the size of the boxes' intersection, and when the trainer holds replicas
the source replica rotates with the engine index to spread the load. Tensors with the same shape and sharding
are grouped so trillion-parameter models (70k tensors) plan in well under a second.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from fabricsim.hwmodels.endpoints import expand_endpoints

from .errors import InfeasibleError, PlacementError
from .models import ModelConfig, TensorSpec

Interval = tuple[int, int]

# Which dim tensor parallelism splits (Megatron / vLLM conventions); anything not listed is replicated.
_COLUMN = re.compile(
    r"(q_proj|k_proj|v_proj|gate_proj|up_proj|q_b_proj|kv_b_proj|embed_tokens|lm_head)\.(weight|bias)$")
_ROW = re.compile(r"(o_proj|down_proj)\.weight$")
_KV = re.compile(r"(k_proj|v_proj)\.(weight|bias)$")
_INDEX = re.compile(r"\.\d+\.")


@functools.lru_cache(maxsize=1 << 20)
def _kind(name: str) -> str:
    """A tensor name without its layer and expert indices (memoised: the same names recur in every plan)."""
    return _INDEX.sub(".", name)


def tp_split_dim(name: str) -> int | None:
    """0 for column-parallel (and vocab-parallel) tensors, 1 for row-parallel, None for replicated ones."""
    if _COLUMN.search(name):
        return 0
    if _ROW.search(name):
        return 1
    return None


def even_intervals(n: int, parts: int) -> list[Interval]:
    """Split [0, n) into `parts` near-equal contiguous blocks (the first n % parts get one more)."""
    base, extra = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def chunk_intervals(n: int, parts: int) -> list[Interval]:
    """FSDP2's split: blocks of ceil(n / parts) rows, the last ones short or empty (torch.chunk semantics)."""
    size = -(-n // parts)
    return [(min(i * size, n), min((i + 1) * size, n)) for i in range(parts)]


@dataclass(frozen=True)
class Shard:
    """A box of a tensor: the interval `span` along `dim` (None = the whole tensor)."""

    dim: int | None
    span: Interval | None

    def numel(self, shape: tuple[int, ...]) -> int:
        n = 1
        for d, s in enumerate(shape):
            n *= (self.span[1] - self.span[0]) if d == self.dim and self.span is not None else s
        return n


def _replica_overlaps(shape: tuple[int, ...], replica: list[tuple[str, Shard]], want: Shard, t_index: dict[str, int],
                      boxes: dict[int, tuple]) -> tuple[np.ndarray, np.ndarray]:
    """`overlap_numel(shape, sh, want)` for every shard `sh` of a replica at once, as (trainer rows, elements).

    The replica's shard boxes are turned into arrays once per tensor group (`boxes`, keyed by the replica)."""
    box = boxes.get(id(replica))
    if box is None:
        rows = np.array([t_index[g] for g, _ in replica], dtype=np.int64)
        lo = np.zeros((len(replica), len(shape)), dtype=np.int64)
        hi = np.tile(np.array(shape, dtype=np.int64), (len(replica), 1))
        for i, (_, sh) in enumerate(replica):
            if sh.dim is not None and sh.span is not None:
                lo[i, sh.dim], hi[i, sh.dim] = sh.span
        box = boxes[id(replica)] = (rows, lo, hi, replica)  # the replica rides along so its id stays its own
    rows, lo, hi, _ = box
    if want.dim is not None and want.span is not None:
        lo, hi = lo.copy(), hi.copy()
        lo[:, want.dim] = np.maximum(lo[:, want.dim], want.span[0])
        hi[:, want.dim] = np.minimum(hi[:, want.dim], want.span[1])
    return rows, np.prod(np.clip(hi - lo, 0, None), axis=1).astype(np.float64)


def overlap_numel(shape: tuple[int, ...], a: Shard, b: Shard) -> int:
    """Elements two shards of the same tensor share."""
    n = 1
    for d, s in enumerate(shape):
        lo, hi = 0, s
        for sh in (a, b):
            if sh.dim == d and sh.span is not None:
                lo, hi = max(lo, sh.span[0]), min(hi, sh.span[1])
        if hi <= lo:
            return 0
        n *= hi - lo
    return n


# ---- trainer layouts ---------------------------------------------------------------------------------------
def _gpu_list(gpus: str | list[str]) -> list[str]:
    """Layouts take a list of GPU names or one string with ranges (`node0-63.gpu0-7`)."""
    return expand_endpoints(gpus) if isinstance(gpus, str) else list(gpus)


def _twice(gpus: list[str]) -> str:
    """The first GPU a list names a second time (for the error that says which)."""
    seen: set[str] = set()
    for g in gpus:
        if g in seen:
            return g
        seen.add(g)
    return ""


class TrainerLayout:
    """Where the trainer keeps each tensor: `holders(t)` lists, per replica, [(gpu, shard), ...]."""

    gpus: list[str]

    def holders(self, t: TensorSpec, model: ModelConfig) -> list[list[tuple[str, Shard]]]:  # pragma: no cover
        raise NotImplementedError

    def check(self, model: ModelConfig) -> None:
        """Raise `PlacementError` if the layout cannot hold this model."""

    def group_key(self, t: TensorSpec, model: ModelConfig) -> tuple:
        """Everything `holders` depends on besides the tensor's kind and shape (so plans can be shared)."""
        return ()

    def describe(self) -> str:  # pragma: no cover
        raise NotImplementedError


@dataclass
class FSDPLayout(TrainerLayout):
    """FSDP2 / ZeRO-3: every tensor split on dim 0 over all GPUs; one replica."""

    gpus: list[str]

    def __post_init__(self) -> None:
        self.gpus = _gpu_list(self.gpus)
        if not self.gpus:
            raise PlacementError("an FSDP layout needs at least one GPU")
        if len(set(self.gpus)) != len(self.gpus):
            raise PlacementError(f"an FSDP layout lists {_twice(self.gpus)} twice")

    def holders(self, t: TensorSpec, model: ModelConfig) -> list[list[tuple[str, Shard]]]:
        spans = chunk_intervals(t.shape[0], len(self.gpus))
        return [[(g, Shard(0, s)) for g, s in zip(self.gpus, spans, strict=True) if s[1] > s[0]]]

    def describe(self) -> str:
        return f"fsdp{len(self.gpus)}"


@dataclass
class MegatronLayout(TrainerLayout):
    """Megatron-Core TP x PP x DP (EP inside the TP x DP ranks of a stage, expert-TP 1 when EP > 1)."""

    gpus: list[str]
    tp: int = 1
    pp: int = 1
    ep: int = 1
    dp: int = field(init=False)

    def __post_init__(self) -> None:
        self.gpus = _gpu_list(self.gpus)
        n = len(self.gpus)
        for what, v in (("TP", self.tp), ("PP", self.pp), ("EP", self.ep)):
            if v < 1:
                raise PlacementError(f"Megatron {what} degree must be >= 1, got {v}")
        if n % (self.tp * self.pp):
            raise PlacementError(f"Megatron layout: {n} GPUs is not a multiple of TP x PP = {self.tp}x{self.pp}")
        self.dp = n // (self.tp * self.pp)
        if (self.tp * self.dp) % self.ep:
            raise PlacementError(f"Megatron layout: EP {self.ep} does not divide TP x DP = {self.tp * self.dp}")

    def check(self, model: ModelConfig) -> None:
        _check_tp(model, self.tp, "Megatron TP")
        if self.pp > model.num_layers:
            raise PlacementError(f"Megatron PP {self.pp} exceeds the {model.num_layers} layers of {model.name}")
        if self.ep > 1 and not model.is_moe:
            raise PlacementError(f"Megatron EP {self.ep}: {model.name} is a dense model, with no experts to spread")
        if self.ep > 1 and model.num_experts % self.ep:
            raise PlacementError(f"Megatron EP {self.ep} does not divide the {model.num_experts} experts of "
                                 f"{model.name}")

    def _stage(self, t: TensorSpec, model: ModelConfig) -> int:
        layer = t.layer
        if layer is None:
            return 0 if "embed_tokens" in t.name else self.pp - 1
        bounds = even_intervals(model.num_layers, self.pp)
        return next(s for s, (lo, hi) in enumerate(bounds) if lo <= layer < hi)

    def _rank(self, stage: int, d: int, t: int) -> str:
        return self.gpus[stage * self.tp * self.dp + d * self.tp + t]

    @property
    def tp_groups(self) -> list[list[str]]:
        """The GPUs of each tensor-parallel group, by stage then data-parallel rank (consecutive GPUs, as
        Megatron's default rank order puts TP innermost)."""
        return [[self._rank(s, d, t) for t in range(self.tp)] for s in range(self.pp) for d in range(self.dp)]

    def group_key(self, t: TensorSpec, model: ModelConfig) -> tuple:
        e = t.expert
        return (self._stage(t, model), None if e is None or self.ep == 1 else e // (model.num_experts // self.ep))

    def holders(self, t: TensorSpec, model: ModelConfig) -> list[list[tuple[str, Shard]]]:
        s = self._stage(t, model)
        e = t.expert
        if e is not None and self.ep > 1:
            per = model.num_experts // self.ep
            r = e // per
            replicas = (self.tp * self.dp) // self.ep
            stage0 = s * self.tp * self.dp
            return [[(self.gpus[stage0 + k * self.ep + r], Shard(None, None))] for k in range(replicas)]
        dim = tp_split_dim(t.name)
        if dim is None:
            return [[(self._rank(s, d, 0), Shard(None, None))] for d in range(self.dp)]
        spans = even_intervals(t.shape[dim], self.tp)
        return [[(self._rank(s, d, k), Shard(dim, spans[k])) for k in range(self.tp)] for d in range(self.dp)]

    def describe(self) -> str:
        return f"megatron-tp{self.tp}-pp{self.pp}-ep{self.ep}-dp{self.dp}"


def _check_tp(model: ModelConfig, tp: int, what: str) -> None:
    if model.num_heads % tp:
        raise PlacementError(f"{what} {tp} does not divide the {model.num_heads} attention heads of {model.name}")
    if not model.is_mla and model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise PlacementError(f"{what} {tp} and the {model.num_kv_heads} KV heads of {model.name}: neither divides "
                             "the other")
    if model.intermediate_size % tp:
        raise PlacementError(f"{what} {tp} does not divide intermediate size {model.intermediate_size}")
    if model.is_moe and model.moe_intermediate_size % tp:
        raise PlacementError(f"{what} {tp} does not divide MoE intermediate size {model.moe_intermediate_size}")


# ---- rollout layout ----------------------------------------------------------------------------------------
@dataclass
class RolloutLayout:
    """Inference engines of TP degree `tp` on `gpus` (consecutive groups of `tp` form one engine)."""

    gpus: list[str]
    tp: int = 1
    expert_parallel: bool = False

    def __post_init__(self) -> None:
        self.gpus = _gpu_list(self.gpus)
        if self.tp < 1:
            raise PlacementError(f"rollout TP degree must be >= 1, got {self.tp}")
        if not self.gpus or len(self.gpus) % self.tp:
            raise PlacementError(f"rollout layout: {len(self.gpus)} GPUs is not a multiple of TP {self.tp}")
        if len(set(self.gpus)) != len(self.gpus):
            raise PlacementError(f"a rollout layout lists {_twice(self.gpus)} twice")

    @property
    def engines(self) -> list[list[str]]:
        return [self.gpus[i:i + self.tp] for i in range(0, len(self.gpus), self.tp)]

    def check(self, model: ModelConfig) -> None:
        _check_tp(model, self.tp, "rollout TP")
        if self.expert_parallel and not model.is_moe:
            raise PlacementError(f"rollout expert parallelism: {model.name} is a dense model, with no experts to "
                                 f"spread")
        if self.expert_parallel and model.num_experts % self.tp:
            raise PlacementError(f"rollout expert parallelism over {self.tp} ranks does not divide the "
                                 f"{model.num_experts} experts of {model.name}")

    def group_key(self, t: TensorSpec, model: ModelConfig) -> tuple:
        e = t.expert
        return (None if e is None or not self.expert_parallel else e * self.tp // model.num_experts,)

    def shard(self, t: TensorSpec, model: ModelConfig, rank: int) -> Shard | None:
        """The slice rank `rank` of an engine keeps (None: this rank keeps nothing of `t`)."""
        k = self.tp
        if k == 1:
            return Shard(None, None)
        e = t.expert
        if e is not None and self.expert_parallel:
            return Shard(None, None) if e * k // model.num_experts == rank else None
        dim = tp_split_dim(t.name)
        if dim is None:
            return Shard(None, None)
        if _KV.search(t.name) and not model.is_mla and model.num_kv_heads < k:
            head = rank * model.num_kv_heads // k
            return Shard(0, (head * model.head_dim, (head + 1) * model.head_dim))
        return Shard(dim, even_intervals(t.shape[dim], k)[rank])

    def describe(self) -> str:
        return f"{len(self.engines)}x tp{self.tp}" + ("-ep" if self.expert_parallel else "")


# ---- the plan ----------------------------------------------------------------------------------------------
@dataclass
class ReshardPlan:
    """Bytes from each trainer GPU to each rollout GPU (`matrix[i, j]`), and what each side holds.

    `pieces` (only with `detail=True`): (tensor, trainer GPU, rollout GPU, bytes) for every non-empty overlap.
    """

    model: ModelConfig
    trainer_gpus: list[str]
    rollout_gpus: list[str]
    matrix: np.ndarray
    need_bytes: np.ndarray          # per rollout GPU: bytes of its own shards
    held_bytes: np.ndarray          # per trainer GPU: bytes of its shards (all replicas)
    tensors_per_rollout: np.ndarray  # per rollout GPU: how many tensors it keeps a slice of
    pieces: list[tuple[str, str, str, float]] | None = None

    @property
    def total_bytes(self) -> float:
        return float(self.matrix.sum())

    def sources(self, rollout_gpu: str) -> dict[str, float]:
        j = self.rollout_gpus.index(rollout_gpu)
        return {g: float(b) for g, b in zip(self.trainer_gpus, self.matrix[:, j], strict=True) if b > 0}


def reshard(model: ModelConfig, trainer: TrainerLayout, rollout: RolloutLayout, *, detail: bool = False) -> ReshardPlan:
    """Which bytes of every tensor go from which trainer GPU to which rollout GPU (see the module docstring).

    Every rollout GPU receives each element of its shards exactly once, from one replica of the trainer's
    shards; `detail=True` also lists the per-tensor pieces (for tests and small models).
    """
    trainer.check(model)
    rollout.check(model)
    t_index = {g: i for i, g in enumerate(trainer.gpus)}
    r_index = {g: j for j, g in enumerate(rollout.gpus)}
    matrix = np.zeros((len(trainer.gpus), len(rollout.gpus)))
    need = np.zeros(len(rollout.gpus))
    held = np.zeros(len(trainer.gpus))
    count = np.zeros(len(rollout.gpus), dtype=np.int64)
    pieces: list[tuple[str, str, str, float]] | None = [] if detail else None
    engines = rollout.engines
    boxes: dict[int, tuple] = {}
    # Group tensors with identical shape and sharding: their plans are the same, times a multiplicity.
    for (shape, holders, rshards, eb, _nbytes), mult, members in _groups(model, trainer, rollout, keep=detail):
        boxes.clear()
        for replica in holders:
            for g, sh in replica:
                held[t_index[g]] += sh.numel(shape) * eb * mult
        for e, engine in enumerate(engines):
            replica = holders[e % len(holders)]
            for k, rgpu in enumerate(engine):
                want = rshards[k]
                if want is None:
                    continue
                j = r_index[rgpu]
                need[j] += want.numel(shape) * eb * mult
                count[j] += mult
                if pieces is None:  # all shards of the replica at once (T x R pairs make a 1,024-GPU plan)
                    rows, n = _replica_overlaps(shape, replica, want, t_index, boxes)
                    np.add.at(matrix[:, j], rows, n * (eb * mult))
                    continue
                for g, sh in replica:
                    n = overlap_numel(shape, sh, want)
                    if n:
                        matrix[t_index[g], j] += n * eb * mult
                        pieces.extend((t.name, g, rgpu, n * eb) for t in members)
    return ReshardPlan(model, list(trainer.gpus), list(rollout.gpus), matrix, need, held, count, pieces)


@dataclass
class AssembledPlan:
    """A full-tensor schedule: each tensor is assigned to one trainer GPU holding a shard of it (round robin over
    all holders of all replicas), which fetches the other shards of that replica (`fetch[k, i]`: bytes GPU i
    fetches from GPU k), then sends each rollout GPU its whole slice (`send[i, j]`). This is what strategies that
    transform tensors before sending (fp8 with block scales, fused QKV, expert stacking) must do, as Perplexity's
    RDMA schedule does with `full_tensor()`. `unique[i]`: bytes of the tensors GPU i assembles.
    """

    trainer_gpus: list[str]
    rollout_gpus: list[str]
    fetch: np.ndarray
    send: np.ndarray
    unique: np.ndarray


def assembled_plan(model: ModelConfig, trainer: TrainerLayout, rollout: RolloutLayout) -> AssembledPlan:
    """The full-tensor schedule of `AssembledPlan` (bytes conserved as in `reshard`: column sums of `send` are
    what each rollout GPU keeps).

    Members of a group are dealt round robin over the holder slots, starting where the previous group stopped.
    A group with fewer members than slots (an embedding, an LM head) is dealt again for every engine from a
    shifted start, so its copies leave from different GPUs (each of which assembles the tensor): otherwise the
    one GPU holding a 1 GB LM head would send it to every engine alone.
    """
    trainer.check(model)
    rollout.check(model)
    t_index = {g: i for i, g in enumerate(trainer.gpus)}
    r_index = {g: j for j, g in enumerate(rollout.gpus)}
    n, r = len(trainer.gpus), len(rollout.gpus)
    fetch, send, unique = np.zeros((n, n)), np.zeros((n, r)), np.zeros(n)
    engines = rollout.engines
    offset = 0
    for (shape, holders, rshards, eb, nbytes), m, _ in _groups(model, trainer, rollout):
        slots = [(rep, g) for rep in holders for g, _ in rep]
        h = len(slots)

        def dealt(residue: int, m: int = m, h: int = h) -> int:
            """How many of the m members u have (u mod h) == residue."""
            return m // h + (1 if residue < m % h else 0)

        shifts = range(len(engines)) if m < h else [0] * len(engines)
        for s, (rep, g) in enumerate(slots):
            i = t_index[g]
            residues = {(s - offset - e) % h for e in set(shifts)}
            assembled = sum(dealt(x) for x in residues)
            if not assembled:
                continue
            unique[i] += nbytes * assembled
            for g2, sh in rep:
                if g2 != g:
                    fetch[t_index[g2], i] += sh.numel(shape) * eb * assembled
            for e, engine in zip(shifts, engines, strict=True):
                c = dealt((s - offset - e) % h)
                for k, rgpu in enumerate(engine):
                    if c and rshards[k] is not None:
                        send[i, r_index[rgpu]] += rshards[k].numel(shape) * eb * c
        offset += m
    return AssembledPlan(list(trainer.gpus), list(rollout.gpus), fetch, send, unique)


def _groups(model: ModelConfig, trainer: TrainerLayout, rollout: RolloutLayout,
            keep: bool = False) -> list[tuple[tuple, int, list[TensorSpec]]]:
    """((shape, holders, rollout shards, bytes/element, tensor bytes), multiplicity, members if `keep`) per group
    of tensors sharing kind (name without indices), shape and the layouts' group keys: the plan of one
    representative serves the whole group, which is what keeps 70k-tensor models fast."""
    groups: dict[tuple, list[TensorSpec]] = defaultdict(list)
    for t in model.tensors():
        groups[(_kind(t.name), t.shape, t.dtype, trainer.group_key(t, model), rollout.group_key(t, model))].append(t)
    out = []
    for members in groups.values():
        t = members[0]
        holders = tuple(tuple(r) for r in trainer.holders(t, model))
        rshards = tuple(rollout.shard(t, model, k) for k in range(rollout.tp))
        out.append(((t.shape, holders, rshards, t.nbytes / t.numel, t.nbytes), len(members), members if keep else []))
    return out


def check_fits(plan: ReshardPlan, capacity_bytes: dict[str, float], *, reserve_fraction: float = 0.0,
               resident_bytes: dict[str, float] | None = None, bytes_ratio: float = 1.0) -> None:
    """Raise `InfeasibleError` naming the GPU when its rollout weights (plus `resident_bytes` already there, plus
    `reserve_fraction` of HBM kept for KV cache and activations) exceed its capacity. `bytes_ratio` scales the
    plan's (trainer-dtype) bytes to the engines' dtype (0.5 for fp8 engines of a bf16 model)."""
    resident = resident_bytes or {}
    for g, raw in zip(plan.rollout_gpus, plan.need_bytes, strict=True):
        nbytes = raw * bytes_ratio
        cap = capacity_bytes[g]
        used = nbytes + resident.get(g, 0.0) + reserve_fraction * cap
        if used > cap:
            raise InfeasibleError(
                f"rollout layout does not fit on {g}: {nbytes / 2**30:.1f} GiB of {plan.model.name} weights"
                f"{f' + {resident[g] / 2**30:.1f} GiB resident' if resident.get(g) else ''}"
                f"{f' + {reserve_fraction:.0%} reserve' if reserve_fraction else ''} > {cap / 2**30:.1f} GiB HBM")
