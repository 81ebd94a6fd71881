"""`lumina bench`: the benchmark table, measured on the machine at hand, beside the baselines.

- `spec`: what one benchmark run trains (sizes, modes, token budgets, batch, seeds, speed trial).
- `baselines`: Hugging Face Llama / Mixtral at Lumina's shapes, and a plain PyTorch loop; one
  baseline training run in a fresh process (`python -m lumina.bench.baselines`).
- `speed`: Lumina's trainer and the baselines timed side by side in one process.
- `breakdown`: where one step's time goes (torch's profiler), and the ratio that leaves room for.
- `runner`: runs every case (Lumina through `python -m lumina.pretrain`), adds the ratios, loss
  verdicts, projections and claims, and writes the results file.
- `verdict`: the one rule every verdict follows (one-sided 95% bounds against a threshold); the
  isoFLOP study uses it too.
- `results`: the results file's schema (provenance included), checked on write and on read.
- `upgrade`: rewrites a schema-4 results file to the current schema from its own measurements.
- `report`: docs/benchmarks.md, rendered from the results file only.
- `plots`: the PNG figures, also from the results file only.

Dependencies point one way: runner -> (trainer | baselines | speed | verdict) -> breakdown; upgrade ->
runner; report and plots read only the results file (report does its arithmetic with breakdown's
functions). Provenance comes from lumina.util.provenance, shared with every other results writer.
"""
