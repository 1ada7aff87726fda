"""The vLLM plugin (inference.vllm_plugin): no adapter delta for rows without an adapter, and the
grouped LoRA products equal vLLM's own per-token ones for rows with one.

These run vLLM's real PunicaWrapperCPU in this process; the worker-level check (a base request
in a batch with an unmistakable adapter) is in tests/inference/test_turns_e2e.py.
"""

from __future__ import annotations

import pytest
import torch
from vllm.lora.layers.utils import LoRAMapping
from vllm.lora.punica_wrapper import punica_cpu

from inference import vllm_plugin
from inference.vllm_plugin import (
    _PATCHED_FLAG,
    grouped_expand,
    grouped_shrink,
    index_groups,
    lora_cpu_patch,
)

SLOTS, RANK, IN, OUT = 3, 4, 16, 12
# lora ids held in the slots; the last slot is occupied, which is what the bug needs.
SLOT_IDS = [5, 6, 7]


def _weights(seed: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    # Two slices, like a merged q/v projection: A is (slots, 1, rank, in), B (slots, 1, out, rank).
    a = tuple(torch.randn(SLOTS, 1, RANK, IN, generator=generator) for _ in range(2))
    b = tuple(torch.randn(SLOTS, 1, OUT, RANK, generator=generator) for _ in range(2))
    return a, b


def _wrapper(index_mapping: tuple[int, ...], prompt_mapping: tuple[int, ...], *, prefill: bool):
    wrapper = punica_cpu.PunicaWrapperCPU(64, 8, "cpu")
    mapping = LoRAMapping(index_mapping=index_mapping, prompt_mapping=prompt_mapping, is_prefill=prefill)
    wrapper.update_metadata(mapping, list(SLOT_IDS), SLOTS, 1000)
    return wrapper


def _expected(x: torch.Tensor, a, b, slots: list[int]) -> torch.Tensor:
    """The LoRA delta each row should get, computed row by row; a row of slot -1 gets none."""
    rows = []
    for row, slot in zip(x, slots, strict=True):
        if slot < 0:
            rows.append(torch.zeros(2 * OUT))
        else:
            rows.append(torch.cat([b[i][slot, 0] @ (a[i][slot, 0] @ row) for i in range(2)]))
    return torch.stack(rows)


@pytest.fixture(autouse=True)
def _patched() -> None:
    assert lora_cpu_patch()
    assert getattr(punica_cpu.PunicaWrapperCPU, _PATCHED_FLAG)


@pytest.mark.parametrize("per_token_max_rows", [0, 64], ids=["grouped", "per_token"])
@pytest.mark.parametrize("prefill", [False, True])
def test_rows_without_an_adapter_get_no_delta_and_adapter_rows_get_their_own(
    prefill: bool, per_token_max_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vllm_plugin, "PER_TOKEN_MAX_ROWS", per_token_max_rows)
    # Tokens: two of a base request (id 0), two through the last slot (id 7), one through slot 0,
    # one more base token; the way a mixed batch reaches the LoRA layers.
    index_mapping = (0, 0, 7, 7, 5, 0)
    wrapper = _wrapper(index_mapping, (0, 7, 5, 0), prefill=prefill)
    a, b = _weights(seed=1)
    x = torch.randn(len(index_mapping), IN, generator=torch.Generator().manual_seed(2))
    y = torch.zeros(len(index_mapping), 2 * OUT)

    wrapper.add_lora_linear(y, x, a, b, 1.0, (OUT, OUT))

    assert (wrapper._revenant_per_token is not None) == (per_token_max_rows > 0)
    expected = _expected(x, a, b, [-1, -1, 2, 2, 0, -1])
    assert torch.equal(y[[0, 1, 5]], torch.zeros(3, 2 * OUT))
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


def test_vllms_own_path_leaks_the_last_slot_into_base_rows() -> None:
    """The bug the plugin exists for, shown on vLLM's unpatched code; when a vLLM upgrade fixes
    it, this test fails and the plugin's -1 handling can go."""
    originals = punica_cpu.PunicaWrapperCPU._revenant_originals
    wrapper = _wrapper((0, 0, 7, 7), (0, 7), prefill=False)
    wrapper._revenant_token_groups = None
    a, b = _weights(seed=3)
    x = torch.randn(4, IN, generator=torch.Generator().manual_seed(4))
    y = torch.zeros(4, 2 * OUT)

    with originals.ops_restored():
        originals.add_lora_linear(wrapper, y, x, a, b, 1.0, (OUT, OUT))

    leaked = _expected(x[:2], a, b, [2, 2])
    torch.testing.assert_close(y[:2], leaked, rtol=1e-4, atol=1e-4)


def test_a_batch_with_no_adapter_request_has_no_groups_and_is_left_untouched() -> None:
    wrapper = _wrapper((0, 0, 0), (0,), prefill=True)
    y = torch.ones(3, 2 * OUT)
    a, b = _weights(seed=5)

    wrapper.add_lora_linear(y, torch.randn(3, IN), a, b, 1.0, (OUT, OUT))

    assert wrapper._revenant_token_groups == []
    assert torch.equal(y, torch.ones(3, 2 * OUT))


def test_groups_are_slices_for_contiguous_rows_and_indices_otherwise() -> None:
    groups = dict(index_groups(torch.tensor([2, 2, 2, -1, 0, 2])))

    assert set(groups) == {0, 2}
    assert groups[0] == slice(4, 5)
    assert groups[2].tolist() == [0, 1, 2, 5]
    assert index_groups(torch.tensor([1, 1])) == [(1, slice(0, 2))]
    assert index_groups(torch.tensor([-1, -1])) == []


def test_the_torch_ops_vllm_calls_elsewhere_skip_rows_without_an_adapter() -> None:
    # bgmv_shrink / bgmv_expand as vLLM's logits and embedding LoRA call them (A: (slots, 1, r, in)).
    a, b = _weights(seed=6)
    x = torch.randn(4, IN)
    indices = torch.tensor([-1, 2, 0, -1])
    shrunk = torch.full((4, RANK), 9.0)
    y = torch.ones(4, OUT)

    grouped_shrink(x, a[0], shrunk, indices, 0.5)
    grouped_expand(shrunk, b[0], y, indices, add_inputs=True)

    assert torch.equal(shrunk[[0, 3]], torch.zeros(2, RANK))
    torch.testing.assert_close(shrunk[1], 0.5 * a[0][2, 0] @ x[1])
    assert torch.equal(y[[0, 3]], torch.ones(2, OUT))
    torch.testing.assert_close(y[2], 1 + b[0][0, 0] @ shrunk[2])
