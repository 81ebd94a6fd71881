"""`lumina bench`: the benchmark table, measured on the machine at hand, beside the baselines.

- `spec`: what one benchmark run trains (sizes, modes, token budgets, batch, seed).
- `child`: one training run in a fresh process (Lumina through its trainer, or a baseline loop).
- `baselines`: Hugging Face Llama / Mixtral at Lumina's shapes, and a plain PyTorch loop.
- `runner`: runs every case, adds projections and claims, and writes the results file.
- `results`: the results file's schema, checked on write and on read.
- `report`: docs/benchmarks.md, rendered from the results file only.
- `plots`: the PNG figures, also from the results file only.

Dependencies point one way: runner -> child -> (trainer | baselines); report and plots read only
results.
"""
