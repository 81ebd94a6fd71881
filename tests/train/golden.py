"""Regenerate the golden loss curves: `python -m tests.train.golden` (say why in the commit)."""

from __future__ import annotations

import json
import pathlib
import tempfile

from lumina.config import MODES
from tests.train.runs import train, train_losses
from tests.train.test_train_e2e import GOLDEN, ITERS


def main() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for mode in MODES:
        with tempfile.TemporaryDirectory() as run_dir:
            assert train(run_dir, "--mode", mode, "--train-iters", str(ITERS)) == 0
            losses = train_losses(run_dir)
        path = pathlib.Path(GOLDEN, f"debug_{mode}.json")
        path.write_text(json.dumps({"preset": "debug", "mode": mode, "iterations": ITERS,
                                    "losses": [losses[i] for i in range(1, ITERS + 1)]}, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
