"""ds_configs/ and slurm/ are generated: the checked-in files equal the generators' output, and
every planned layout is one the trainer accepts."""

import pathlib
import subprocess

import pytest

from lumina.plan.generate import combos, table_plan, train_iters

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_ds_configs_match_the_generator():
    from lumina.commands.dsconfig import expected_files

    files = expected_files()
    on_disk = {p.name for p in (ROOT / "ds_configs").glob("*.json")}
    assert on_disk == set(files), "ds_configs/ has files the generator does not write (or lacks some)"
    for name, text in files.items():
        assert (ROOT / "ds_configs" / name).read_text() == text, f"ds_configs/{name} drifted: run `lumina dsconfig`"


def test_slurm_scripts_match_the_generator_and_parse():
    from lumina.commands.slurm import expected_files

    files = expected_files()
    assert {p.name for p in (ROOT / "slurm").glob("*.sh")} == set(files)
    for name, text in files.items():
        path = ROOT / "slurm" / name
        assert path.read_text() == text, f"slurm/{name} drifted: run `lumina slurm`"
        subprocess.run(["bash", "-n", str(path)], check=True)


@pytest.mark.parametrize("size, mode", combos())
def test_planned_layout_passes_the_trainers_checks(size, mode):
    from lumina.pretrain import build_parser
    from lumina.train.loop import plan_layout

    plan = table_plan(size, mode)
    assert plan.fits
    argv = [*plan.train_flags(), "--ds_config", str(ROOT / "ds_configs" / f"{size}_{mode}.json"),
            "--train-iters", str(train_iters(plan)), "--dry-run", str(plan.gpus)]
    _, _, ds, layout, _ = plan_layout(build_parser().parse_args(argv))
    assert (layout.tp, layout.pp, layout.ep, layout.dp) == (plan.tp, plan.pp, plan.ep, plan.dp)
    assert ds["zero_optimization"]["stage"] == plan.zero
    assert ds["train_batch_size"] == plan.global_batch


def test_ops_page_tables_match_the_generator():
    from lumina.plan.tables import splice

    page = (ROOT / "docs" / "ops.md").read_text()
    assert page == splice(page), "docs/ops.md drifted: python -m lumina.plan.tables docs/ops.md"
