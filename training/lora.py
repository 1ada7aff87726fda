"""LoRA training with PEFT on the registered base model (plain LoRA on CPU, QLoRA through
bitsandbytes when a GPU is present).

- `lora_train`: a small synchronous trainer over chat examples; the test suite uses it to
  make real adapters that differ from the base model.
- `lora_fit`: what training jobs run. The loss counts the assistant's tokens only (the
  prompt is context, not something to imitate); examples come in a seeded order that is a
  function of the step, and checkpoints hold the adapter and optimizer state, so a job
  resumed at step k continues exactly where it stopped.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


def lora_random(
    *, base_model_path: str, output_dir: Path, rank: int = 8, seed: int = 0, strength: float = 1.0
) -> Path:
    """A PEFT folder with random, non-zero A and B on the trainer's modules and rank: the size and
    layout of a trained adapter, made in a second instead of minutes.

    For benchmarks (speed does not depend on what the weights say) and, with a large `strength`
    (B scaled by it), for tests that need an adapter whose effect is unmistakable: the model
    under it says nonsense from the first token, so its delta showing up in another request's
    reply cannot be missed. At strength 1 the replies stay fluent, only different.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=TARGET_MODULES,
        init_lora_weights=False,  # random B as well as A, so the delta is not zero
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(strength)
    output_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(output_dir))
    return output_dir


def _assistant_labels(
    tokenizer: Any, messages: list[dict[str, str]], max_tokens: int
) -> tuple[list[int], list[int]]:
    """Token ids of a whole exchange and labels that count only the assistant's answer."""
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    # Long prompts lose their start (the persona's opening), never the answer being learnt.
    overflow = max(0, len(full) - max_tokens)
    ids = full[overflow:]
    labels = [-100 if index < len(prompt) - overflow else token for index, token in enumerate(ids)]
    return ids, labels


def _step_order(count: int, step: int, seed: int) -> int:
    """The example a step trains on: each epoch is a seeded shuffle, so the order depends only
    on the step (a resumed run sees what an uninterrupted one would have)."""
    epoch, offset = divmod(step, count)
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[offset]


# The learning-rate schedule: linear warm-up over the first WARMUP_SHARE of the steps, then
# linear decay to zero. A function of the step alone, so a resumed run follows it exactly.
WARMUP_SHARE = 0.1
MAX_GRAD_NORM = 1.0


def lr_factor(step: int, steps: int) -> float:
    """The share of the peak learning rate that step `step` (0-based) of `steps` uses."""
    warmup = max(1, round(steps * WARMUP_SHARE))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def lora_fit(
    *,
    base_model_path: str,
    conversations: Sequence[list[dict[str, str]]],
    output_dir: Path,
    steps: int,
    rank: int = 8,
    alpha: int = 16,
    learning_rate: float = 2e-3,
    max_tokens: int = 768,
    seed: int = 0,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 20,
    on_step: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> Path:
    """Train a LoRA for `steps` steps (resuming from `checkpoint_dir` when it holds one); save a
    PEFT folder to `output_dir` and return it. `on_step` may raise to stop the run (a cancel, a
    lost lease, a time limit): the exception reaches the caller."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    gpu = torch.cuda.is_available()
    if gpu:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(
            base_model_path, quantization_config=quantization, device_map={"": 0}
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    device = model.device
    start = 0
    saved = checkpoint_dir / "adapter" if checkpoint_dir else None
    if saved is not None and (saved / "adapter_config.json").exists():
        peft_model = PeftModel.from_pretrained(model, str(saved), is_trainable=True)
        start = int((checkpoint_dir / "step").read_text())  # type: ignore[operator]
    else:
        config = LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=TARGET_MODULES, lora_dropout=0.0, task_type="CAUSAL_LM"
        )
        peft_model = get_peft_model(model, config)
    encoded = [_assistant_labels(tokenizer, messages, max_tokens) for messages in conversations]
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=learning_rate)
    if start and checkpoint_dir is not None and (checkpoint_dir / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(checkpoint_dir / "optimizer.pt", map_location=device))
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    for step in range(start, steps):
        ids, labels = encoded[_step_order(len(encoded), step, seed)]
        loss = peft_model(
            input_ids=torch.tensor([ids], device=device), labels=torch.tensor([labels], device=device)
        ).loss
        loss.backward()
        # One example a step is a noisy gradient: clip it, and follow the schedule, so the last
        # steps refine rather than shake the adapter (a pilot at a constant 2e-3 lost its voice).
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * lr_factor(step, steps)
        optimizer.step()
        optimizer.zero_grad()
        done = step + 1
        if checkpoint_dir is not None and (done % checkpoint_every == 0) and done < steps:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            peft_model.save_pretrained(str(checkpoint_dir / "adapter"))
            torch.save(optimizer.state_dict(), checkpoint_dir / "optimizer.pt")
            (checkpoint_dir / "step").write_text(str(done))  # written last: the checkpoint is whole
            if on_checkpoint is not None:
                on_checkpoint(done)
        if on_step is not None:
            on_step(done, float(loss.item()))
    output_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(output_dir))
    return output_dir
