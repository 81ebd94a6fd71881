"""Every shipped DeepSpeed config trains the hybrid model, and ZeRO does not change the numbers."""

import pathlib

import pytest

from tests.train.runs import metrics, train, train_losses

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARGS = ("--mode", "hybrid", "--train-iters", "3")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("zero0"))
    assert train(run, *ARGS, "--ds_config", str(ROOT / "ds_configs" / "zero0.json")) == 0
    return train_losses(run)


@pytest.mark.parametrize("name, rel", [("zero1", 1e-6), pytest.param("zero2", 1e-6, marks=pytest.mark.slow),
                                       ("zero3", 1e-6), pytest.param("bf16_zero1", 2e-2, marks=pytest.mark.slow),
                                       ("bf16_zero3", 2e-2),
                                       pytest.param("bf16_zero3_offload", 2e-2, marks=pytest.mark.slow)])
def test_shipped_config_trains_like_zero0(tmp_path, reference, name, rel):
    run = str(tmp_path / name)
    assert train(run, *ARGS, "--ds_config", str(ROOT / "ds_configs" / f"{name}.json"), timeout=900) == 0
    losses = train_losses(run)
    for i in reference:
        assert losses[i] == pytest.approx(reference[i], rel=rel), f"{name} iteration {i}"
    last = [r for r in metrics(run) if r["split"] == "train"][-1]
    assert last["grad_norm"] > 0
