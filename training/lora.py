"""LoRA training with PEFT on the registered base model (plain LoRA on CPU).

The first piece of the training issue: a small, synchronous trainer over chat examples.
The test suite uses it to make real adapters that differ from the base model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatExample:
    system: str
    user: str
    assistant: str


def lora_train(
    *,
    base_model_path: str,
    examples: Sequence[ChatExample],
    output_dir: Path,
    steps: int = 8,
    rank: int = 8,
    alpha: int = 16,
    learning_rate: float = 5e-3,
    max_tokens: int = 128,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """Train a LoRA on q/k/v/o projections for `steps` steps; save a PEFT folder; return it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    batches = []
    for example in examples:
        messages = [
            {"role": "system", "content": example.system},
            {"role": "user", "content": example.user},
            {"role": "assistant", "content": example.assistant},
        ]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)[:max_tokens]
        batches.append(torch.tensor([ids]))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=learning_rate)
    peft_model.train()
    for step in range(steps):
        input_ids = batches[step % len(batches)]
        loss = peft_model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        logger.info(
            "lora step %d/%d (%d%%) loss %.3f", step + 1, steps, (step + 1) * 100 // steps, loss.item()
        )
        if on_step is not None:
            on_step(step + 1, float(loss.item()))
    output_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(output_dir))
    return output_dir
