"""Studies that train many small models and report what they found, generated into docs/.

    spec.py      what `lumina study isoflop` trains (budgets, size ladder, variants, seeds)
    data.py      its two data sets (the C4 sample, the embedded corpus) through lumina.data
    train.py     one run: a FLOP budget's steps, then the held-out loss
    analysis.py  points, the isoFLOP frontier, verdicts against dense
    runner.py    the whole study, resumable, with provenance
    results.py   the results file's schema and I/O
    report.py    docs/study.md;  plots.py  its figures
"""
