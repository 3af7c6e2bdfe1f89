"""`delta`: send only the values that changed, on top of any transport (`delta:rdma-p2p`, `delta:nccl-broadcast`).

RL fine-tuning with small learning rates changes few bf16 values per step (most updates round away), so a delta
of (value, index) pairs or a bitmap plus values can be far smaller than the weights. The costs: the GPU that
encodes keeps the previous version of what it encodes (`Strategy.encoded_bytes`: a trainer's assembled tensors for
rdma-p2p, the whole model on nccl-broadcast's root) and runs a diff kernel over old and new weights; the receiver
holds the payload in a buffer and runs a scatter kernel instead of a plain copy (with fp8 engines the values
travel, and are written, as fp8). The changed fraction is a parameter, not a claim: it
depends on learning rate, optimizer and step, and must come from the user's own runs.
"""

from __future__ import annotations

from .base import Strategy, delta_encoding

CHANGED_FRACTION = 0.1  # the `changed_fraction` knob's default: a placeholder for the user's own measurement


def delta(inner: Strategy, changed_fraction: float = CHANGED_FRACTION) -> Strategy:
    """`inner` with delta encoding added to its transforms (a new instance; `inner` is unchanged). The fraction is
    kept on it (`changed_fraction`), so an answer can say which it was made with."""
    wrapped = type(inner)(inner.knobs, transforms=(*inner.transforms, delta_encoding(changed_fraction)))
    wrapped.changed_fraction = changed_fraction
    return wrapped
