"""Every generated slurm/*.sh passes the trainer's pre-flight as written: its own training flags
(the TRAIN_ARGS array, read back by bash) at its own world size (nodes x ntasks-per-node from its
#SBATCH lines), through `plan_layout`, the checks the trainer makes before any process group
exists. tests/plan/test_generated.py checks the plans; this checks what a job would run."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "slurm").glob("*.sh"))

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def train_args(text: str) -> list[str]:
    """The script's TRAIN_ARGS array as bash reads it."""
    block = re.search(r"^TRAIN_ARGS=\(.*?^\)$", text, re.M | re.S)
    assert block is not None, "no TRAIN_ARGS=( ... ) block"
    out = subprocess.run(["bash", "-c", block[0] + '\nprintf "%s\\0" "${TRAIN_ARGS[@]}"'],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def world_size(text: str) -> int:
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", text, re.M))
    return int(directives["nodes"]) * int(directives["ntasks-per-node"])


def test_all_32_scripts_are_read():
    assert len(SCRIPTS) == 32


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_generated_script_passes_the_trainers_preflight(script, monkeypatch):
    from lumina.pretrain import build_parser
    from lumina.train.loop import plan_layout

    text = script.read_text()
    argv, world = train_args(text), world_size(text)
    monkeypatch.chdir(ROOT)  # the launcher runs the trainer from the repository root (--ds_config ds_configs/...)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _, _, ds, layout, _ = plan_layout(build_parser().parse_args([*argv, "--dry-run", str(world)]))
    assert layout.world_size == layout.tp * layout.pp * layout.dp == world
    flag = dict(zip(argv, argv[1:]))
    assert (layout.tp, layout.pp, layout.ep) == tuple(int(flag.get(f"--{name}-model-parallel-size", 1))
                                                      for name in ("tensor", "pipeline", "expert"))
    assert ds["train_batch_size"] == int(flag["--global-batch-size"])
