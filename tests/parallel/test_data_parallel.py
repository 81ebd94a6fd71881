"""Data parallel with ZeRO 1, 2 and 3 gives the single-process numbers, MoE and MoD included.

DP rank r gets the r-th micro-batch of the global batch, so 2 ranks x micro-batch 4 see the same
micro-batches as 1 rank x 2 accumulation steps of 4: even capacity-limited MoE routing and the
balance loss (which depend on the micro-batch) agree. The ZeRO-3 case is MoE under ZeRO-3: the
experts are ordinary weights to DeepSpeed, partitioned over DP like the rest.
"""

import pytest

from tests.parallel.conftest import assert_resume_is_exact, assert_same_losses, assert_same_valid_loss
from tests.train.runs import train, train_losses


# The default run has ZeRO-3 here and ZeRO-2 in test_dp2_zero2_resume_is_exact; ZeRO-1 runs
# DeepSpeed's stage-1/2 optimizer code that ZeRO-2 runs.
@pytest.mark.parametrize("zero", [pytest.param("1", marks=pytest.mark.slow), pytest.param("2", marks=pytest.mark.slow),
                                  "3"])
def test_dp2_hybrid_equals_one_process(tmp_path, one_process, zero):
    run = str(tmp_path / f"dp2-zero{zero}")
    assert train(run, "--mode", "hybrid", "--train-iters", "5", "--global-batch-size", "8",
                 "--zero-stage", zero, world_size=2, timeout=600) == 0
    assert_same_losses(train_losses(run), train_losses(one_process("hybrid")))
    assert_same_valid_loss(run, one_process("hybrid"))


def test_dp2_zero2_resume_is_exact(tmp_path):
    """ZeRO-2 partitions optimizer states and gradients over DP: both ranks' partitions come back."""
    assert_resume_is_exact(tmp_path, "--mode", "hybrid", "--global-batch-size", "8", "--zero-stage", "2", world_size=2)
