"""`lumina dsconfig`: write the DeepSpeed JSON files in ds_configs/ (all of them are generated).

The 8 base configs (zero0 ... bf16_zero3_offload) and one per preset and mode,
`<preset>_<mode>.json`, with the ZeRO stage and batch sizes of its plan for the benchmark
table's hardware (lumina.plan.generate).
"""

from __future__ import annotations

import argparse
import os


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="ds_configs", help="directory to write into (default: ds_configs)")


def expected_files() -> dict[str, str]:
    """File name -> content of every generated DeepSpeed config."""
    from lumina.plan.generate import combos, ds_config, table_plan
    from lumina.train.dsconfig import BASE_CONFIGS, base_config, render

    files = {f"{name}.json": render(base_config(stage, bf16, offload)) for name, stage, bf16, offload in BASE_CONFIGS}
    for size, mode in combos():
        files[f"{size}_{mode}.json"] = render(ds_config(table_plan(size, mode)))
    return files


def run(args: argparse.Namespace) -> int:
    from lumina.util.files import atomic_write_text, check_output_dir

    check_output_dir("--out", args.out)
    files = expected_files()
    for name, text in files.items():
        atomic_write_text(os.path.join(args.out, name), text)
    print(f"wrote {len(files)} DeepSpeed configs to {args.out}")
    return 0
