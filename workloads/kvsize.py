"""KV-cache sizing beyond `ModelConfig.kv_bytes_per_token`: per layer, per page, per GPU under tensor parallelism.

`models.py` says how many KV bytes one token adds to the whole model. Serving needs more: paged caches
allocate and move *pages* (`page_tokens` tokens of one layer), tensor parallelism splits GQA/MHA KV heads
across GPUs but replicates MLA's single latent "head" on every rank, and quantised caches (fp8, int4) often
carry one scale per group of elements. `KVLayout` holds those choices and answers every size question the
serving loop and the policies ask, so no policy does its own arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from .counts import check_count
from .errors import WorkloadError
from .models import ModelConfig, dtype_bytes


class KVConfigError(WorkloadError):
    """A KV layout or budget that cannot exist: page size < 1 token, a budget below one page, bad TP degree."""


@dataclass(frozen=True)
class KVLayout:
    """How one model's KV cache is laid out: dtype, page size in tokens, tensor-parallel degree.

    quant_group: elements sharing one bf16 scale (0 = no scales, as for bf16 or per-tensor fp8).
    """

    model: ModelConfig
    kv_dtype: str = "bf16"
    page_tokens: int = 16
    tp: int = 1
    quant_group: int = 0

    def __post_init__(self) -> None:
        # Checked for their kind too: a model given by name, or tp="2", failed later as an AttributeError or
        # TypeError traceback (and tp=2.5 gave fractional heads per GPU without a word).
        if not isinstance(self.model, ModelConfig):
            raise KVConfigError(f"model must be a ModelConfig (models.get(name) gives one), got {self.model!r}")
        object.__setattr__(self, "page_tokens", check_count(self.page_tokens, "KV page size (page_tokens)",
                                                            error=KVConfigError))
        object.__setattr__(self, "tp", check_count(self.tp, "tensor-parallel degree", error=KVConfigError))
        object.__setattr__(self, "quant_group", check_count(self.quant_group, "quant_group", lo=0, error=KVConfigError))
        dtype_bytes(self.kv_dtype, "kv_dtype")

    @property
    def kind(self) -> str:
        m = self.model
        if m.is_mla:
            return "mla"
        return "mha" if m.num_kv_heads == m.num_heads else "gqa"

    @cached_property
    def elements_per_token_per_layer(self) -> int:
        """K and V heads x head_dim (MHA/GQA), or the latent plus the shared RoPE key (MLA)."""
        m = self.model
        if m.is_mla:
            return m.kv_lora_rank + m.qk_rope_head_dim
        return 2 * m.num_kv_heads * m.head_dim

    @cached_property
    def bytes_per_element(self) -> float:
        scale = 2.0 / self.quant_group if self.quant_group else 0.0
        return dtype_bytes(self.kv_dtype) + scale

    @cached_property
    def bytes_per_token_per_layer(self) -> float:
        return self.elements_per_token_per_layer * self.bytes_per_element

    @cached_property
    def bytes_per_token(self) -> float:
        """Whole model, one token (equals `ModelConfig.kv_bytes_per_token` when there are no scales)."""
        return self.model.num_layers * self.bytes_per_token_per_layer

    @cached_property
    def gpu_share(self) -> float:
        """Fraction of a token's KV each TP rank holds: KV heads split across ranks (replicated once there are
        more ranks than KV heads); MLA's latent is one shared head, so every rank holds all of it."""
        if self.model.is_mla:
            return 1.0
        kv = self.model.num_kv_heads
        return max(1, kv // self.tp) / kv

    @cached_property
    def bytes_per_token_per_gpu(self) -> float:
        return self.bytes_per_token * self.gpu_share

    @cached_property
    def page_bytes(self) -> float:
        """One page of one layer on one GPU: the unit a paged cache allocates and copies."""
        return self.page_tokens * self.bytes_per_token_per_layer * self.gpu_share

    def pages(self, tokens: int) -> int:
        """Pages per layer that `tokens` tokens occupy (a partly filled last page still takes a page)."""
        return -(-int(tokens) // self.page_tokens) if tokens > 0 else 0

    def bytes(self, tokens: float, *, paged: bool = True) -> float:
        """KV bytes of `tokens` tokens over all layers and all TP ranks, rounded up to whole pages if `paged`."""
        return self.bytes_per_gpu(tokens, paged=paged) * self.tp

    def bytes_per_gpu(self, tokens: float, *, paged: bool = True) -> float:
        if paged and tokens > 0:
            tokens = -(-math.ceil(tokens) // self.page_tokens) * self.page_tokens
        return max(0.0, tokens) * self.bytes_per_token_per_gpu

    def page_copies(self, tokens: float, layers: int | None = None) -> int:
        """Page copies one GPU issues to move `tokens` tokens of `layers` layers (all layers by default)."""
        return self.pages(math.ceil(tokens)) * (self.model.num_layers if layers is None else layers)

    def budget_pages(self, budget_bytes_per_gpu: float) -> int:
        """How many tokens' worth of pages (all layers) fit a per-GPU budget; raises when not even one page."""
        per_page_all_layers = self.page_bytes * self.model.num_layers
        if not budget_bytes_per_gpu >= per_page_all_layers:
            raise KVConfigError(
                f"KV budget of {budget_bytes_per_gpu / 2**20:.3f} MiB per GPU is smaller than one page "
                f"({self.page_tokens} tokens x {self.model.num_layers} layers = "
                f"{per_page_all_layers / 2**20:.3f} MiB for {self.model.name}, {self.kv_dtype}, tp={self.tp})")
        return int(budget_bytes_per_gpu // per_page_all_layers)
