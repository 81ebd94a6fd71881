"""Lumina: dense, MoE, MoD and hybrid decoder-only language models on DeepSpeed and megatron-core."""

__version__ = "0.1.0"
