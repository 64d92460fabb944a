"""HF architecture name -> the model class that implements it (dense Llama family and MoE)."""

from __future__ import annotations

from radixserve.models.llama import MODEL_CLASSES as DENSE_MODEL_CLASSES
from radixserve.models.llama import LlamaForCausalLM
from radixserve.models.moe import MOE_MODEL_CLASSES

MODEL_CLASSES: dict[str, type[LlamaForCausalLM]] = {**DENSE_MODEL_CLASSES, **MOE_MODEL_CLASSES}
