"""Training: flags, DeepSpeed engine, loop, metrics, checkpoints. Depends on lumina.model and
lumina.data; nothing below it depends on this package."""
