"""Attention masks: causal, bidirectional and prefix-LM, as boolean ``(B, 1, Q, K)`` tensors.

``True`` means "may attend". A prefix-LM mask lets every position see the first
``prefix_length`` keys (a prompt, or prefix-tuning's virtual keys/values) while the rest stays
causal; the bidirectional mask is what an encoder uses. ``key_padding`` (``(B, K)``, 1 = real
token) hides padded keys; :func:`to_additive` turns any of these into the additive float form
attention kernels take.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

MASK_KINDS = ("causal", "bidirectional", "prefix")


def build_mask(
    kind: str,
    query_length: int,
    key_length: int | None = None,
    prefix_length: int = 0,
    key_padding: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A boolean mask ``(B, 1, Q, K)`` (``B`` = 1 without ``key_padding``).

    The queries are the last ``query_length`` of ``key_length`` positions (keys default to the
    queries; a longer key axis means cached keys come first, as in decoding with a KV cache).
    """
    if kind not in MASK_KINDS:
        raise ConfigError("kind", f"mask kind must be one of {list(MASK_KINDS)}, got {kind!r}")
    key_length = query_length if key_length is None else key_length
    if key_length < query_length:
        raise ConfigError("key_length", f"{key_length} keys cannot serve {query_length} queries")
    if not 0 <= prefix_length <= key_length:
        raise ConfigError("prefix_length", f"must be in [0, {key_length}], got {prefix_length}")
    if key_padding is not None:
        device = key_padding.device
    q_pos = torch.arange(key_length - query_length, key_length, device=device)[:, None]  # (Q, 1)
    k_pos = torch.arange(key_length, device=device)[None, :]  # (1, K)
    if kind == "bidirectional":
        mask = torch.ones(query_length, key_length, dtype=torch.bool, device=device)
    else:
        mask = k_pos <= q_pos  # (Q, K) causal
        if kind == "prefix":
            mask = mask | (k_pos < prefix_length)
    mask = mask[None, None]  # (1, 1, Q, K)
    if key_padding is not None:
        if key_padding.shape[-1] != key_length:
            raise ConfigError("key_padding", f"has {key_padding.shape[-1]} columns for {key_length} keys")
        mask = mask & key_padding.bool()[:, None, None, :]  # (B, 1, Q, K)
    return mask


def to_additive(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """0 where attention is allowed, the dtype's most negative value where it is not."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
