"""The GPU table (peaks, memory, bandwidths, prices) and the MFU assumptions. Every figure names
its source; assumptions say so. The one table of datasheet peaks: the trainer's MFU reads it too
(`lumina.train.hardware`), matching CUDA's device name against `device_name`.

Peaks are dense (no structured sparsity) BF16 tensor-core FLOP/s with FP32 accumulation, the
rate MFU is quoted against. H200 SXM has the H100 SXM's compute. Prices are the benchmark table's (A100 $4.00/h, H100 $6.00/h,
RTX 4090 $0.75/h); H200 and the 40 GB A100 had no price there and reuse H100's and A100's,
which `--price` overrides.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: float     # dense BF16, FP32 accumulate
    memory_gib: float      # usable HBM/GDDR as the vendor states it (GB, counted here as GiB: conservative)
    hbm_gbs: float         # memory bandwidth, GB/s
    gpus_per_node: int     # the usual server: 8 SXM GPUs on NVLink; 4090s in 8-GPU PCIe boxes
    price_per_hour: float  # USD per GPU-hour
    source: str
    intra_node_gbs: float = 0.0   # per GPU, one direction (NVLink; PCIe without it)
    inter_node_gbs: float = 0.0   # per GPU, one direction (the node's network divided by its GPUs)
    network_source: str = ""
    device_name: str = ""         # what CUDA's device name contains for this GPU (the trainer's MFU peak)


_A100_NET = ("A100 datasheet: NVLink 3 600 GB/s per GPU (300 each way); DGX A100: one 200 Gb/s HDR InfiniBand "
             "port per GPU (25 GB/s)")
_H100_NET = ("H100 datasheet: NVLink 4 900 GB/s per GPU (450 each way); DGX H100: one 400 Gb/s NDR port per GPU "
             "(50 GB/s)")

GPUS: dict[str, GPU] = {g.name: g for g in (
    GPU("a100-40gb", 312.0, 40, 1555, 8, 4.00,
        "NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS dense, 40 GB HBM2, 1,555 GB/s",
        300, 25, _A100_NET, "A100"),
    GPU("a100-80gb", 312.0, 80, 2039, 8, 4.00,
        "NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS dense, 80 GB HBM2e, 2,039 GB/s (SXM)",
        300, 25, _A100_NET, "A100"),
    GPU("h100-80gb", 989.0, 80, 3350, 8, 6.00,
        "NVIDIA H100 Tensor Core GPU datasheet (2023, SXM5): BF16 1,979 TFLOPS with sparsity = 989 dense, 80 GB HBM3, 3.35 TB/s",
        450, 50, _H100_NET, "H100"),
    GPU("h200-141gb", 989.0, 141, 4800, 8, 6.00,
        "NVIDIA H200 Tensor Core GPU datasheet (2024, SXM): BF16 1,979 TFLOPS with sparsity = 989 dense, 141 GB HBM3e, 4.8 TB/s; "
        "price not in the benchmark table: H100's assumed",
        450, 50, _H100_NET, "H200"),
    GPU("rtx-4090", 165.2, 24, 1008, 8, 0.75,
        "NVIDIA Ada GPU architecture whitepaper (2022, v2.1, appendix A), GeForce RTX 4090: BF16 tensor 165.2 TFLOPS dense "
        "with FP32 accumulate, 24 GB GDDR6X, 1,008 GB/s",
        25, 3, "no NVLink: PCIe 4.0 x16 (32 GB/s per direction, 25 assumed achievable); between nodes an assumed "
               "25 Gb/s per GPU (a 200 Gb/s NIC shared by 8 GPUs)", "RTX 4090"),
)}


def gpu(name: str) -> GPU:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise ValueError(f"--gpu={name!r} is unknown: choose one of {', '.join(GPUS)}") from None


def gpu_for_device(device_name: str) -> GPU | None:
    """The table's entry for a CUDA device name ("NVIDIA H200", "NVIDIA A100-SXM4-80GB"), or None.
    Both A100s have the same peak, which is what the trainer reads."""
    return next((g for g in GPUS.values() if g.device_name.lower() in device_name.lower()), None)


@dataclass(frozen=True)
class MFUAssumption:
    mfu: float
    source: str
    # True when the roofline bound (lumina.plan.roofline.capped) replaced the published figure, so
    # one-line summaries do not call a computed bound an assumption.
    bound: bool = False

    @property
    def kind(self) -> str:
        return "roofline-bound" if self.bound else "assumed"


# Dense MFU a well-tuned Megatron/DeepSpeed run reaches, per GPU family, with the published figure
# it is set just below. The mode factors are Lumina's assumptions, not measurements.
_DENSE = {
    "a100": MFUAssumption(0.45, "Korthikanti et al. 2022 (arXiv 2205.05198): 54.2% MFU, 530B GPT on 2,240 A100 "
                                "with selective recompute, 42.1% with full recompute; Narayanan et al. 2021 "
                                "(arXiv 2104.04473): 52% of peak, 1T GPT on 3,072 A100"),
    "h100": MFUAssumption(0.40, "Llama 3 (arXiv 2407.21783): 38-43% BF16 MFU, 405B on 8K-16K H100"),
    "h200": MFUAssumption(0.40, "no published large-scale figure: H100's (Llama 3, arXiv 2407.21783) assumed"),
    "rtx": MFUAssumption(0.30, "no published large-scale figure: assumed below the A100's for PCIe-only "
                               "communication (no NVLink on the RTX 4090)"),
}
_MODE_FACTOR = {
    "dense": (1.0, "dense"),
    "moe": (0.6, "Lumina assumption: router, permutation and all-to-all cost ~40% of dense efficiency; "
                 "no published MFU for 8-expert top-2 training at these sizes is used here"),
    "mod": (0.85, "Lumina assumption from its own CPU benchmark (docs/model.md): MoD blocks reach "
                  "88-102% of their FLOPs-ratio speedup"),
    "hybrid": (0.51, "Lumina assumption: the MoE factor times the MoD factor (0.6 x 0.85)"),
}


def mfu_for(gpu_name: str, mode: str) -> MFUAssumption:
    family = next(f for f in _DENSE if gpu_name.startswith(f))
    dense = _DENSE[family]
    factor, why = _MODE_FACTOR[mode]
    if factor == 1.0:
        return dense
    return MFUAssumption(round(dense.mfu * factor, 4), f"{dense.source}; x{factor} for {mode}: {why}")


# Best MFU published for dense training on A100 (Korthikanti et al. 2022, above): the claims check
# flags a claim that needs more.
BEST_PUBLISHED_MFU = {"a100": 0.542, "h100": 0.43, "h200": 0.43, "rtx": 0.542}
