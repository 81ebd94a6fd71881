"""Layouts the trainer does not run are refused before any process group exists, in our words."""

import pytest
import torch.distributed as dist


@pytest.mark.parametrize("argv, message", [
    (["--sequence-parallel"], "--sequence-parallel=True is invalid"),
    (["--pipeline-model-parallel-size", "2", "--zero-stage", "2"], "use --zero-stage 1"),
    (["--mode", "moe", "--expert-model-parallel-size", "2", "--zero-stage", "3"], "--expert-model-parallel-size"),
    (["--mode", "moe", "--expert-model-parallel-size", "3"], "--expert-model-parallel-size=3"),
])
def test_trainer_refuses_unsupported_layouts_before_starting(monkeypatch, tmp_path, argv, message):
    from lumina.pretrain import build_parser
    from lumina.train.loop import Trainer

    for key, value in {"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args([*argv, "--run-dir", str(tmp_path), "--global-batch-size", "16",
                                      "--micro-batch-size", "2"])
    with pytest.raises(ValueError) as err:
        Trainer(args)
    assert message in str(err.value)
    assert not dist.is_initialized()
