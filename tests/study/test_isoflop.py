"""`lumina study isoflop`: the smoke run writes every output end to end; the verdict rule; the
frontier; FLOPs from lumina.accounting; held-out C4 documents disjoint from training; bad input
refused before training; the committed page is what the committed results render to."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lumina.study import analysis, report, results
from lumina.study.runner import plan
from lumina.study.spec import StudySpec, smoke_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE_C4 = os.path.join(ROOT, "tests", "fixtures", "c4_en_train00000_head_200.jsonl")
PNG = b"\x89PNG\r\n\x1a\n"


def _study(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "lumina.cli", "study", "isoflop", *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    # The fixture's 200 C4 documents stand in for the shipped 1,000 (a second prepare of C4 would
    # cost seconds); it also runs the --c4 path.
    out = tmp_path_factory.mktemp("study")
    proc = _study("--smoke", "--c4", FIXTURE_C4, "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_smoke_writes_every_output_and_a_verdict_per_variant_and_budget(smoke):
    assert {"results.json", "study.md", "study_loss_vs_flops.png", "study_frontier.png"} <= set(os.listdir(smoke))
    assert "progress.jsonl" not in os.listdir(smoke)  # folded into the results file
    for name in ("study_loss_vs_flops.png", "study_frontier.png"):
        assert (smoke / name).read_bytes()[:8] == PNG
    data = results.load(str(smoke / "results.json"))  # schema-checked
    spec = smoke_spec()
    assert data["kind"] == "smoke" and data["provenance"]["command"].startswith("lumina study isoflop --smoke")
    assert data["provenance"]["commit"] and isinstance(data["provenance"]["dirty"], bool)
    assert len(data["runs"]) == len(plan(spec)) * len(spec.seeds)
    assert {d["name"] for d in data["datasets"]} == {"c4", "embedded"}
    assert next(d for d in data["datasets"] if d["name"] == "c4")["source"] == FIXTURE_C4
    # a verdict for every non-dense variant at every budget and data set it ran at; one seed decides nothing
    expected = {(ds, b, v) for ds, b, v, _ in plan(spec) if v != "dense"}
    assert {(v["dataset"], v["budget"], v["variant"]) for v in data["verdicts"]} == expected
    assert {"mod@0.125", "mod@0.25", "hybrid-integrated"} <= {v for _, _, v in expected}
    assert {v["verdict"] for v in data["verdicts"]} == {"undecided"}
    page = (smoke / "study.md").read_text()
    assert page == report.render(data, plots_dir=".")
    assert "**Smoke run.**" in page and "](./study_frontier.png)" in page


def test_runs_train_their_budget_in_lumina_accounting_flops(smoke):
    from lumina.accounting import account
    from lumina.study.spec import variant_config

    data = results.load(str(smoke / "results.json"))
    spec = smoke_spec()
    widths = {s["name"]: (s["hidden_size"], s["ffn_hidden_size"]) for s in data["sizes"]}
    fpt = {}
    for r in data["runs"]:
        cfg = variant_config(spec, r["variant"], *widths[r["size"]], vocab_size=2048)
        assert r["flops_per_token"] == account(cfg).flops_per_token
        assert r["flops"] == r["steps"] * spec.tokens_per_step * r["flops_per_token"]
        # the nearest whole number of steps to the budget
        assert abs(r["flops"] - r["budget"]) <= 0.5 * spec.tokens_per_step * r["flops_per_token"]
        fpt[r["variant"], r["size"]] = r["flops_per_token"]
    # performed FLOPs: MoD's skipped tokens are not counted, and fewer capacity means fewer FLOPs
    for size in widths:
        assert fpt["mod@0.125", size] < fpt["mod@0.25", size] < fpt["mod", size] < fpt["dense", size]


def _runs(losses: dict) -> list[dict]:
    """Synthetic runs: {(variant, size): [loss per seed]}."""
    return [{"dataset": "c4", "budget": 1e10, "variant": v, "size": s, "seed": seed, "valid_loss": loss,
             "params_non_embedding": 1, "flops": 1e10, "tokens": 1, "steps": 1}
            for (v, s), ls in losses.items() for seed, loss in enumerate(ls)]


def test_frontier_takes_each_variant_at_its_best_size_and_pairs_seeds():
    out = analysis.analyse(_runs({
        ("dense", "small"): [5.00, 5.10, 5.05], ("dense", "big"): [5.20, 5.30, 5.25],
        ("mod", "small"): [5.30, 5.40, 5.35], ("mod", "big"): [4.90, 5.01, 4.94],
    }))
    best = {p["variant"]: p["size"] for p in out["frontier"]}
    assert best == {"dense": "small", "mod": "big"}
    (v,) = out["verdicts"]
    # paired by seed: -0.10, -0.09, -0.11; mean -0.10 with a standard error of 0.0058
    assert v["difference_mean"] == pytest.approx(-0.10)
    assert v["difference_se"] == pytest.approx(0.00577, abs=1e-4)
    assert v["verdict"] == "better"


@pytest.mark.parametrize("diffs, verdict", [
    ([-0.030, -0.032, -0.031], "better"),
    ([0.030, 0.032, 0.031], "worse"),
    # mean -0.01: a rule on the mean alone would say "better", but the seeds' scatter covers zero
    ([-0.05, 0.04, -0.02], "undecided"),
    # mean +0.013, standard error 0.0067: t(2 df) = 2.920 puts the lower bound at -0.006, not above 0
    ([0.02, 0.0, 0.02], "undecided"),
    ([-0.5], "undecided"),  # one seed has no interval
])
def test_verdict_needs_a_one_sided_95_interval_that_excludes_equality(diffs, verdict):
    assert analysis.compare(diffs)[2] == verdict


def test_c4_held_out_documents_are_never_trained_on(tmp_path, monkeypatch):
    from lumina.data import IndexedDataset, load_tokenizer
    from lumina.study import data

    monkeypatch.setenv("LUMINA_CACHE", str(tmp_path))
    tok = load_tokenizer()
    ds = data.load("c4", 64, 2, 2, tok, c4_file=FIXTURE_C4)
    loader = ds.train_loader(64, 2, seed=1, tokenizer=tok)
    (start, count), = loader._ranges
    indexed = IndexedDataset(ds.train_prefixes[0])
    held_out_start = indexed.doc_token_offset(indexed.num_docs - 20)  # the last 10% of 200 documents
    assert start == 0 and count == held_out_start
    held_out = indexed.tokens(held_out_start, indexed.num_tokens)
    for batch in ds.valid_batches:  # every held-out window lies in the held-out documents
        windows = np.lib.stride_tricks.sliding_window_view(held_out, batch.shape[1])
        for row in batch.numpy():
            assert (windows == row).all(axis=1).any(), "a held-out window is not in the held-out documents"


def test_shipped_c4_sample_matches_its_provenance():
    from lumina.study.data import C4_SAMPLE, C4_SAMPLE_SHA256
    from lumina.util.files import file_sha256

    assert file_sha256(str(C4_SAMPLE)) == C4_SAMPLE_SHA256
    assert C4_SAMPLE_SHA256 in (C4_SAMPLE.parent / "SOURCES.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--c4", "/nonexistent/c4.jsonl"], "--c4 '/nonexistent/c4.jsonl': no such file"),
    (["--budgets", "1e3"], "--budgets 1000: dense at width 24 gets 1 step(s)"),
    (["--budgets", "2e10,1e10"], "give distinct budgets in increasing order"),
    (["--budgets", "abc"], "--budgets 'abc'"),
    (["--datasets", "pile"], "choose from c4, embedded"),
])
def test_bad_input_is_refused_in_one_line_before_training(tmp_path, capsys, args, message):
    from lumina.cli import main

    assert main(["study", "isoflop", "--out-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err
    assert not os.listdir(tmp_path)  # nothing trained, nothing written


def test_spec_refuses_a_width_that_repeats():
    with pytest.raises(ValueError, match="width_factors"):
        StudySpec(width_factors=(0.5, 0.51))


def test_committed_page_is_rendered_from_the_committed_results():
    data = results.load(os.path.join(ROOT, "docs", "study", "results.json"))
    with open(os.path.join(ROOT, "docs", "study.md")) as f:
        assert f.read() == report.render(data, plots_dir="study"), \
            "docs/study.md drifted from docs/study/results.json: run `lumina study isoflop --report-only`"
    assert data["kind"] in ("full", "reduced")
    json.dumps(data)


def test_an_interrupted_study_resumes_without_retraining(tmp_path, monkeypatch):
    import dataclasses

    from lumina.study import runner, train

    spec = dataclasses.replace(smoke_spec(), datasets=("embedded",), budgets=(1e9,), width_factors=(0.5,),
                               ablation_budget=0)
    first = runner.run(spec, "test", str(tmp_path), log=lambda *_: None)
    assert len(first["runs"]) == 7  # 4 modes + 2 MoD capacities + the integrated hybrid

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train, "train_run", no_training)
    again = runner.run(spec, "test", str(tmp_path), log=lambda *_: None)
    assert again["runs"] == first["runs"]
    # the page must not pass off the resumed runs' time as this invocation's
    assert (first["provenance"]["resumed_runs"], again["provenance"]["resumed_runs"]) == (0, 7)
    assert "7 runs came from the progress file of an earlier, interrupted invocation" in report.render(again)
    # another spec does not take this one's runs
    with pytest.raises(AssertionError, match="trained again"):
        runner.run(dataclasses.replace(spec, seeds=(2,)), "test", str(tmp_path), log=lambda *_: None)
