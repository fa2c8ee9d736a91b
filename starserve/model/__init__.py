"""Llama-architecture model for a paged KV cache, and its loaders (GGUF, Hugging Face)."""

from starserve.model.config import ModelConfig
from starserve.model.loader import LoadedModel, bundled_gguf, export_hf, load_model

__all__ = ["LoadedModel", "ModelConfig", "bundled_gguf", "export_hf", "load_model"]
