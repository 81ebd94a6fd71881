"""Single-device model code. It knows nothing of torch.distributed, DeepSpeed or SLURM: parallel
wiring comes in only through the `LayerFactory` it is handed."""

from lumina.model.layers import LayerFactory
from lumina.model.transformer import LMOutput, LuminaLM

__all__ = ["LayerFactory", "LMOutput", "LuminaLM"]
