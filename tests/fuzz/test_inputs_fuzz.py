"""Fuzzing what users type and what lands on disk: every input ends in a one-line error that names
the thing, or in a correct result; never a traceback from inside a library or a silent wrong
value. Each property runs a few dozen generated cases here; the `slow` variants run many more.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lumina.util import argtypes

# Strings a user might type for a number, including the edge values that broke things before.
NUMBER_TEXT = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-0", "0", "-1", "1.5", "", " ", "1,5", "0x10",
                     "1e-400", "2**3", "None", "true"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-10**12, max_value=10**12).map(str),
    st.text(max_size=8),
)
QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=2000, deadline=None)

RULES = [
    (argtypes.POSITIVE, lambda v: v > 0), (argtypes.NON_NEGATIVE, lambda v: v >= 0),
    (argtypes.POSITIVE_INT, lambda v: v >= 1 and isinstance(v, int)), (argtypes.UNIT_OPEN, lambda v: 0 <= v < 1),
    (argtypes.SEED, lambda v: 0 <= v < 2**32), (argtypes.COUNT, lambda v: v > 0),
]


def _check_rules(text: str) -> None:
    for parse, ok in RULES:
        try:
            value = parse(text)
        except argparse_error():
            continue
        assert math.isfinite(value) and ok(value), (parse.__name__, text, value)


def argparse_error():
    import argparse

    return argparse.ArgumentTypeError


@QUICK
@given(NUMBER_TEXT)
def test_flag_values_parse_in_range_or_are_refused(text):
    _check_rules(text)


@pytest.mark.slow  # the same property over many more cases; the default run holds 60 above
@MANY
@given(NUMBER_TEXT)
def test_flag_values_parse_in_range_or_are_refused_many(text):
    _check_rules(text)


TRAIN_FLAGS = ["--lr", "--min-lr", "--weight-decay", "--clip-grad", "--adam-beta1", "--adam-eps", "--seed",
               "--micro-batch-size", "--global-batch-size", "--train-iters", "--seq-length", "--peak-tflops",
               "--tensor-model-parallel-size", "--gpus-per-node", "--keep-last", "--eval-iters"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(TRAIN_FLAGS), NUMBER_TEXT)
def test_trainer_flags_end_in_a_layout_or_one_line(capsys, flag, value):
    """`lumina train --dry-run 2 <flag> <value>`: the layout (exit 0) or one error line (exit 2)."""
    from lumina.cli import main

    capsys.readouterr()
    code = main(["train", "--dry-run", "2", "--mode", "dense", flag, value])
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), (flag, value, code)
    if code == 2:
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (flag, value, err)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["gradient_clipping", "zero_optimization", "bf16", "fp16", "train_batch_size"]), JSON_VALUES)
def test_deepspeed_json_values_are_used_or_refused_naming_the_key(tmp_path_factory, key, value):
    from lumina.pretrain import build_parser
    from lumina.train.args import resolve
    from lumina.train.dsconfig import build

    path = tmp_path_factory.mktemp("ds") / "ds.json"
    path.write_text(json.dumps({key: value}))
    res = resolve(build_parser().parse_args(["--micro-batch-size", "8"]), world_size=1)
    try:
        cfg = build(res, str(path), None, False, None, on_cpu=True)
    except ValueError as exc:
        assert key in str(exc) or "ds.json" in str(exc), (key, value, str(exc))
        return
    clip = cfg["gradient_clipping"]
    assert isinstance(clip, (int, float)) and math.isfinite(clip) and clip >= 0
    assert cfg.get("zero_optimization", {}).get("stage", 0) in (0, 1, 2, 3)


@pytest.fixture(scope="module")
def weights_checkpoint(tmp_path_factory):
    from lumina.model import LuminaLM
    from lumina.presets import get_preset
    from lumina.train import checkpoint

    cfg = get_preset("debug", "dense")
    root = tmp_path_factory.mktemp("ckpt")
    checkpoint.write_weights(str(root), cfg, LuminaLM(cfg, init_seed=3).state_dict(), {"tokenizer_sha256": "x"})
    return root


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["part-00000.safetensors", "lumina.json"]), st.floats(0, 1), st.integers(1, 255),
       st.booleans())
def test_damaged_checkpoint_files_are_refused_naming_the_file(weights_checkpoint, tmp_path_factory, name, where,
                                                             xor, truncate):
    """A flipped byte anywhere or a cut anywhere, in the weights or the metadata: refused, naming
    the file; never loaded, never a traceback from safetensors or json."""
    import shutil

    from lumina.train import checkpoint

    root = tmp_path_factory.mktemp("damaged") / "c"
    shutil.copytree(weights_checkpoint, root)
    path = root / "iter_0000000" / name
    data = bytearray(path.read_bytes())
    at = min(int(where * len(data)), len(data) - 1)
    if truncate:
        data = data[:at]
    else:
        data[at] ^= xor
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        checkpoint.load_model_weights(str(root))
    assert name in str(err.value)


def _one_line_or_ok(capsys, argv: list[str]) -> tuple[int, str]:
    """Run `lumina <argv>`: exit 0, or exit 2 with exactly one error line and no traceback.
    Returns the exit code and what went to stdout."""
    from lumina.cli import main

    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, code, err[-500:])
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    return code, out


PLAN_FLAGS = ["--gpus", "--gpus-per-node", "--seq-length", "--global-batch-tokens", "--tokens", "--price", "--mfu",
              "--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--expert-model-parallel-size"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(PLAN_FLAGS), NUMBER_TEXT | st.sampled_from(["1B", "-1B", "2.5T", "1e3M", "8x", "nanB"]))
def test_plan_inputs_end_in_a_plan_or_one_line(capsys, flag, value):
    """`lumina plan --preset b1 <flag> <value> --json`: a plan whose figures are all finite and not
    negative (no "$nan", no negative minutes), or one error line."""
    code, out = _one_line_or_ok(capsys, ["plan", "--preset", "b1", "--mode", "moe", "--gpus", "8", flag, value, "--json"])
    if code == 0:
        for number in _numbers(json.loads(out)):
            assert math.isfinite(number) and number >= 0, (flag, value, number)


def _numbers(tree):
    if isinstance(tree, bool):
        return
    if isinstance(tree, (int, float)):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["--cpu-tasks", "--time", "--preset", "--mode"]),
       NUMBER_TEXT | st.sampled_from(["1:00:00", "25:61:00", "2-00:00:00", "b1", "dense", "hybrid", "b9"]),
       st.sampled_from([[], ["--", "--lr", "nan"], ["--", "--bogus"], ["--", "--train-iters", "5"]]))
def test_slurm_inputs_end_in_a_script_or_one_line(capsys, tmp_path_factory, flag, value, extra):
    """`lumina slurm`: a script written whole, or one error line and no file."""
    out = tmp_path_factory.mktemp("slurm") / "job.sh"
    base = ["slurm", "--out", str(out)] + (["--cpu-tasks", "2"] if flag != "--cpu-tasks" else [])
    if flag not in ("--preset", "--mode"):
        base += ["--preset", "debug", "--mode", "dense"]
    code, _ = _one_line_or_ok(capsys, [*base, flag, value, *extra])
    if code == 0:
        text = out.read_text()
        assert text.startswith("#!") and "#SBATCH" in text
    else:
        assert not out.exists() and not list(out.parent.iterdir()), "an error left a file behind"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["--zero-stage", "--micro-batch-size", "--global-batch-size", "--clip-grad", "--bf16"]),
       NUMBER_TEXT)
def test_dsconfig_inputs_end_in_a_config_or_one_line(capsys, tmp_path_factory, flag, value):
    """`lumina dsconfig --out F <trainer flags>`: a JSON DeepSpeed accepts (finite clipping, a real
    ZeRO stage), or one error line and no file."""
    out = tmp_path_factory.mktemp("ds") / "ds.json"
    argv = ["dsconfig", "--out", str(out), flag] + ([] if flag == "--bf16" else [value])
    from lumina.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusing a stray value after a switch
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), (argv, code, err[-500:])
    if code == 0:
        cfg = json.loads(out.read_text())
        assert cfg.get("zero_optimization", {}).get("stage", 0) in (0, 1, 2, 3)
        assert math.isfinite(cfg.get("gradient_clipping", 0)) and cfg.get("gradient_clipping", 0) >= 0
    else:
        assert "Traceback" not in err and not out.exists()


# Lines a damaged or hostile JSON-lines file may hold.
JSON_LINE = st.one_of(
    st.dictionaries(st.sampled_from(["text", "body", "url"]), JSON_VALUES, max_size=3).map(json.dumps),
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.sampled_from(['{"text": 12345}', '{"text": null}', '{"text": ""}', "[1, 2]", '"just a string"', "{",
                     '{"text": "ok"}', '{"text": "\\ud800"}']),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(JSON_LINE, min_size=1, max_size=6))
def test_data_files_end_in_shards_or_one_line_naming_the_file(capsys, tmp_path_factory, lines):
    """`lumina prepare-data FILE.jsonl`: shards holding exactly the documents with a text, or one
    error line that names the file; never a traceback from json, numpy or sentencepiece."""
    root = tmp_path_factory.mktemp("data")
    path = root / "input.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    from lumina.cli import main

    capsys.readouterr()
    code = main(["prepare-data", str(path), "--output", str(root / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code in (0, 2), (lines, code, err[-800:])
    if code == 2:
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "input.jsonl" in err, (lines, err)


@pytest.mark.parametrize("flag,value", [("--temperature", "nan"), ("--temperature", "-1"), ("--temperature", "inf"),
                                        ("--top-p", "0"), ("--top-p", "1.5"), ("--top-p", "nan"),
                                        ("--max-new-tokens", "0"), ("--max-new-tokens", "100000000"),
                                        ("--max-new-tokens", "-5"), ("--seed", "-1"), ("--seed", "1e400")])
def test_generate_inputs_are_refused_in_one_line_before_loading(capsys, weights_checkpoint, flag, value):
    """Bad sampling values are refused where argparse parses them, naming the flag, before the
    checkpoint is read."""
    from lumina.cli import main

    capsys.readouterr()
    code = main(["generate", "--load", str(weights_checkpoint), "--prompt", "a", flag, value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and flag in err, (flag, value, code, err)
