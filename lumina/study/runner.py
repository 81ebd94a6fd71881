"""Run the whole study in this process and assemble its results file.

Order: data set, budget, variant, size, seed; the ablations run at one budget on the first data
set. Each finished run is appended to a progress file (JSON lines, beside the results) so an
interrupted study resumes where it stopped: a run is redone only if the progress file was written
for another spec.
"""

from __future__ import annotations

import json
import os
import time

from lumina.study.spec import StudySpec, default_spec, smoke_spec, variant_config

SCHEMA_VERSION = 1


def plan(spec: StudySpec) -> list[tuple[str, float, str, int]]:
    """(data set, budget, variant, width-factor index) of every point, in running order."""
    out = []
    for d, dataset in enumerate(spec.datasets):
        for b, budget in enumerate(spec.budgets):
            variants = spec.main_variants() + (spec.ablation_variants() if d == 0 and b == spec.ablation_budget else ())
            out += [(dataset, budget, v, i) for v in variants for i in range(len(spec.sizes()))]
    return out


def check_budgets(spec: StudySpec, vocab_size: int) -> None:
    """Every run gets at least spec.min_steps steps, or the spec is refused before any training."""
    from lumina.accounting import account
    from lumina.study.train import steps_for

    sizes = spec.sizes()
    for _, budget, variant, i in plan(spec):
        _, hidden, ffn = sizes[i]
        fpt = account(variant_config(spec, variant, hidden, ffn, vocab_size)).flops_per_token
        steps = steps_for(budget, fpt, spec.tokens_per_step)
        if steps < spec.min_steps:
            raise ValueError(f"--budgets {budget:g}: {variant} at width {hidden} gets {steps} step(s) of "
                             f"{spec.tokens_per_step} tokens ({fpt:.3g} FLOPs/token); at least {spec.min_steps} "
                             f"are needed, so give budgets of at least "
                             f"{spec.min_steps * spec.tokens_per_step * fpt:.2g} FLOPs")


def provenance(command: str) -> dict:
    """What produced the results (lumina.util.provenance: commit, dirty tree, machine, versions,
    command, date); the runner adds the load on the machine and the times."""
    from lumina.util import provenance as record

    return record.provenance(command)


def spec_kind(spec: StudySpec) -> str:
    """"full" for the published spec, "smoke" for --smoke, "reduced" for anything else."""
    return "full" if spec == default_spec() else "smoke" if spec == smoke_spec() else "reduced"


def _progress(path: str, spec: StudySpec) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines or lines[0].get("spec") != json.loads(json.dumps(spec.to_dict())):  # tuples read back as lists
        os.unlink(path)
        return []
    return lines[1:]


def run(spec: StudySpec, command: str, out_dir: str, c4_file: str | None = None, log=print) -> dict:
    import torch

    from lumina.data import load_tokenizer
    from lumina.study import data as study_data
    from lumina.study.analysis import analyse
    from lumina.study.train import train_run
    from lumina.train.loop import padded_vocab

    tokenizer = load_tokenizer()
    vocab = padded_vocab(tokenizer.vocab_size)
    check_budgets(spec, vocab)
    if c4_file is not None:
        study_data.check_c4_file(c4_file)
    started = time.time()
    load_start = os.getloadavg()
    prov = provenance(command)
    os.makedirs(out_dir, exist_ok=True)
    progress_path = os.path.join(out_dir, "progress.jsonl")
    runs = _progress(progress_path, spec)
    resumed = len(runs)
    done = {(r["dataset"], r["budget"], r["variant"], r["size"], r["seed"]) for r in runs}
    if not runs:
        with open(progress_path, "w") as f:
            f.write(json.dumps({"spec": spec.to_dict()}) + "\n")
    sizes = spec.sizes()
    datasets = {}
    todo = plan(spec)
    total = len(todo) * len(spec.seeds)
    for n, (dataset, budget, variant, i) in enumerate(todo):
        if dataset not in datasets:
            log(f"lumina study: preparing data set {dataset}")
            datasets[dataset] = study_data.load(dataset, spec.seq, spec.micro_batch, spec.eval_batches, tokenizer,
                                                c4_file if dataset == "c4" else None)
        name, hidden, ffn = sizes[i]
        cfg = variant_config(spec, variant, hidden, ffn, vocab)
        for seed in spec.seeds:
            if (dataset, budget, variant, name, seed) in done:
                continue
            record = {"variant": variant, "size": name,
                      **train_run(spec, cfg, datasets[dataset], seed, budget, tokenizer)}
            runs.append(record)
            with open(progress_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            log(f"lumina study: [{len(runs)}/{total}, {time.time() - started:.0f} s] {dataset} {budget:.2g} "
                f"{variant} {name} seed {seed}: {record['steps']} steps, held-out loss {record['valid_loss']:.4f}")
    prov.update(wall_seconds=time.time() - started, resumed_runs=resumed,
                train_seconds=sum(r["train_seconds"] for r in runs), load_average_start=list(load_start),
                load_average_end=list(os.getloadavg()), threads=torch.get_num_threads())
    results = {
        "schema": SCHEMA_VERSION, "kind": spec_kind(spec), "provenance": prov, "spec": spec.to_dict(),
        "sizes": [{"name": n, "hidden_size": h, "ffn_hidden_size": f} for n, h, f in sizes],
        "datasets": [{"name": d.name, "source": d.source, "sha256": d.source_sha256, "train_tokens": d.train_tokens,
                      "eval_tokens": len(d.valid_batches) * spec.tokens_per_step} for d in datasets.values()],
        "runs": runs,
        **analyse(runs),
    }
    return results
