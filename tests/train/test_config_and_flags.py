"""Flags, batch arithmetic and DeepSpeed JSON: refused in our words before anything starts."""

import argparse
import json
import pathlib

import pytest

from lumina.train.args import add_train_args, resolve
from lumina.train.dsconfig import BASE_CONFIGS, base_config, build, render

ROOT = pathlib.Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_args(parser)
    return parser.parse_args(list(argv))


def test_shipped_ds_configs_are_generated():
    for name, stage, bf16, offload in BASE_CONFIGS:
        path = ROOT / "ds_configs" / f"{name}.json"
        assert path.read_text() == render(base_config(stage, bf16, offload)), \
            f"{path} drifted: python -m lumina.train.dsconfig ds_configs"


@pytest.mark.parametrize("name", [c[0] for c in BASE_CONFIGS])
def test_every_shipped_config_is_accepted_and_gets_batch_sizes(name):
    res = resolve(parse("--micro-batch-size", "2", "--global-batch-size", "8"), world_size=2)
    cfg = build(res, str(ROOT / "ds_configs" / f"{name}.json"), None, False, 1.0, on_cpu=True)
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"],
            cfg["train_batch_size"]) == (2, 2, 8)


@pytest.mark.parametrize("argv, message", [
    (("--mode", "dense", "--num-experts", "4"), "--num-experts only apply to --mode moe or hybrid, not --mode dense"),
    (("--mode", "moe", "--mod-capacity", "0.5"), "--mod-capacity only apply to --mode mod or hybrid"),
    (("--preset", "b3"), "preset='b3' is unknown: choose one of debug, debug_200m"),
    (("--mode", "sparse"), "mode='sparse' is unknown"),
    (("--mode", "moe", "--moe-router-topk", "9"), "moe.top_k=9 is invalid"),
    (("--global-batch-size", "12", "--micro-batch-size", "8"), "--global-batch-size=12 must be a positive multiple"),
    (("--load", "/nonexistent/ckpt"), "--load='/nonexistent/ckpt': no such checkpoint directory"),
    (("--min-lr", "1.0", "--lr", "0.1"), "--min-lr=1.0 is invalid"),
    (("--zero-stage", "1", "--ds_config", "x.json"), "--zero-stage and --ds_config both set"),
])
def test_bad_flags_fail_with_a_clear_message(argv, message):
    with pytest.raises(ValueError) as err:
        resolve(parse(*argv), world_size=1)
    assert message in str(err.value)


def test_batch_arithmetic():
    res = resolve(parse("--micro-batch-size", "2", "--global-batch-size", "16"), world_size=2)
    assert (res.dp_size, res.grad_accum, res.global_batch_size) == (2, 4, 16)
    res = resolve(parse("--micro-batch-size", "3"), world_size=4)
    assert (res.grad_accum, res.global_batch_size) == (1, 12)


@pytest.mark.parametrize("content, message", [
    ({"train_batch_size": 64}, "sets train_batch_size=64 but the flags give 8"),
    ({"optimizer": {"type": "Adam"}}, "has an 'optimizer' block"),
    ({"fp16": {"enabled": True}}, "enables fp16, which DeepSpeed does not support on CPU"),
    ([1, 2], "must hold a JSON object"),
    ({"gradient_clipping": 0.5}, "sets gradient_clipping=0.5 but --clip-grad=1.0"),
    ({"gradient_clipping": -3}, "sets gradient_clipping=-3: must be a finite number >= 0"),
    ({"zero_optimization": {"stage": "two"}}, "sets zero_optimization.stage='two': must be 0, 1, 2 or 3"),
    ({"bf16": {"enabled": "yes"}}, "sets bf16={'enabled': 'yes'}: must be a JSON object like"),
])
def test_contradictory_ds_config_is_refused(tmp_path, content, message):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(content))
    res = resolve(parse("--micro-batch-size", "8"), world_size=1)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(res, str(path), None, False, 1.0, on_cpu=True)


def test_a_ds_config_that_is_not_utf8_is_refused_naming_it(tmp_path):
    path = tmp_path / "ds.json"
    path.write_bytes(b'{"gradient_clipping": 1.0, "x": "\xff"}')
    res = resolve(parse("--micro-batch-size", "8"), world_size=1)
    with pytest.raises(ValueError, match=r"--ds_config='.*ds.json' is not UTF-8 text"):
        build(res, str(path), None, False, None, on_cpu=True)


# Values refused where argparse parses them, so `lumina train`, `deepspeed lumina/pretrain.py` and
# `lumina slurm ... -- <flags>` (which runs the same parser) all give the same one line.
@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "argument --lr: 'nan' is not a finite number > 0"),
    (["--lr", "-1"], "argument --lr: '-1' is not a finite number > 0"),
    (["--clip-grad", "-3"], "argument --clip-grad: '-3' is not a finite number >= 0"),
    (["--weight-decay", "-5"], "argument --weight-decay: '-5' is not a finite number >= 0"),
    (["--adam-beta1", "1.5"], "argument --adam-beta1: '1.5' is not a finite number >= 0 and < 1"),
    (["--adam-eps", "-1"], "argument --adam-eps: '-1' is not a finite number > 0"),
    (["--seed", "-1"], "argument --seed: '-1' is not an integer >= 0 and <= 4294967295"),
    (["--peak-tflops", "0"], "argument --peak-tflops: '0' is not a finite number > 0"),
    (["--gpus-per-node", "0"], "argument --gpus-per-node: '0' is not an integer >= 1"),
    (["--dry-run", "0"], "argument --dry-run: '0' is not an integer >= 1"),
    (["--mod-capacity", "1.5"], "argument --mod-capacity: '1.5' is not a finite number > 0 and <= 1"),
])
def test_bad_values_are_refused_where_they_are_parsed(capsys, argv, message):
    from lumina.cli import main
    from lumina.commands.slurm import check_train_flags

    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="refused by the trainer: .*" + message.split(":")[0]):
        check_train_flags("debug", "hybrid", 2, argv)


def test_cli_reports_errors_without_traceback(capsys):
    from lumina.cli import main

    assert main(["train", "--mode", "dense", "--num-experts", "4"]) == 2
    err = capsys.readouterr().err
    assert "--num-experts only apply to --mode moe or hybrid" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["eval", "--load", "/nonexistent/ckpt"], "--load='/nonexistent/ckpt': no such checkpoint directory"),
    (["generate", "--load", "/nonexistent/ckpt", "--prompt", "x"], "no such checkpoint directory"),
    (["generate", "--load", ".", "--prompt", "x", "--max-new-tokens", "0"],
     "argument --max-new-tokens: '0' is not an integer >= 1 and <= 16384"),
    (["generate", "--load", ".", "--prompt", "x", "--max-new-tokens", "100000000"], "and <= 16384"),
    (["generate", "--load", ".", "--prompt", "x", "--temperature", "nan"],
     "argument --temperature: 'nan' is not a finite number >= 0"),
])
def test_eval_and_generate_refuse_bad_input(capsys, argv, message):
    from lumina.cli import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_gradient_clipping_comes_from_the_json_unless_the_flag_is_given(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"gradient_clipping": 0.5}))
    res = resolve(parse(), world_size=1)
    assert build(res, str(path), None, False, None, on_cpu=True)["gradient_clipping"] == 0.5
    assert build(res, None, None, False, None, on_cpu=True)["gradient_clipping"] == 1.0
    assert build(res, None, None, False, 0.3, on_cpu=True)["gradient_clipping"] == 0.3
