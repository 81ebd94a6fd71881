"""The --dry-run report, checked against a 48-rank layout worked out by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lumina.parallel import ParallelLayout, dry_run
from lumina.parallel.dry_run import format_ranks
from lumina.presets import get_preset


@pytest.fixture(scope="module")
def report_48() -> str:
    """b300 moe, TP 8 x PP 3 x DP 2 with EP 2, on 6 nodes of 8 GPUs."""
    cfg = get_preset("b300", "moe")
    return dry_run(ParallelLayout.build(48, 8, 3, 2, 8, model_cfg=cfg, zero_stage=1), cfg)


def _rows(report: str) -> dict[int, tuple]:
    """rank -> (node, local, tp, pp, dp, ep, edp, holds) from the table."""
    table = report.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == ["rank", "node", "local", "tp", "pp", "dp", "ep", "edp", "holds"]
    rows = {}
    for line in table[1:]:
        fields = line.split(maxsplit=8)
        rows[int(fields[0])] = (*map(int, fields[1:8]), fields[8])
    return rows


def _groups(report: str, name: str) -> list[list[int]]:
    """The rank lists printed for one group kind (wrapped lines joined, ranges expanded)."""
    header = report.split("\n\n", 1)[0]
    match = re.search(rf"^  {name} +\d+ x \d+: (.*?)(?=^  \S|\Z)", header, re.MULTILINE | re.DOTALL)
    assert match, f"no {name} groups in the report"
    groups = []
    for body in re.findall(r"\[([^\]]*)\]", match.group(1)):
        ranks: list[int] = []
        for piece in body.split(","):
            lo, _, hi = piece.partition("-")
            ranks += range(int(lo), int(hi or lo) + 1)
        groups.append(ranks)
    return groups


def test_48_rank_table_matches_hand_worked_layout(report_48: str) -> None:
    rows = _rows(report_48)
    assert sorted(rows) == list(range(48))
    # By hand: TP 8 fills exactly one node, so node k is one TP group. DP (size 2) is the next
    # dimension, PP the outermost: nodes 0,1 are stage 0 with dp 0,1; nodes 2,3 stage 1; 4,5
    # stage 2. EP = DP = 2, so ep = dp and each expert shard has one replica (edp 0).
    # node: (pp, dp, ep, edp, holds)
    per_node = {
        0: (0, 0, 0, 0, "embed, L0-L31, experts 0-3"),
        1: (0, 1, 1, 0, "embed, L0-L31, experts 4-7"),
        2: (1, 0, 0, 0, "L32-L63, experts 0-3"),
        3: (1, 1, 1, 0, "L32-L63, experts 4-7"),
        4: (2, 0, 0, 0, "L64-L95, norm, head, experts 0-3"),
        5: (2, 1, 1, 0, "L64-L95, norm, head, experts 4-7"),
    }
    for node, (pp, dp, ep, edp, holds) in per_node.items():
        for local in range(8):
            rank = 8 * node + local
            assert rows[rank] == (node, local, local, pp, dp, ep, edp, holds), rank
    # Three rows as they must read, spot-checked in full.
    table = report_48.splitlines()
    assert "    0     0     0     0     0     0     0     0  embed, L0-L31, experts 0-3" in table
    assert "   29     3     5     5     1     1     1     0  L32-L63, experts 4-7" in table
    assert "   47     5     7     7     2     1     1     0  L64-L95, norm, head, experts 4-7" in table


def test_48_rank_header_matches_hand_worked_layout(report_48: str) -> None:
    lines = report_48.splitlines()
    assert lines[0] == "Parallel layout (dry run: no process group, no tensor)"
    assert ("world:  48 ranks = TP 8 x PP 3 x DP 2, EP 2 within DP (expert DP 1); "
            "6 node(s) x 8 ranks; ZeRO stage 1") in lines
    # 128 / 8 heads, 8 / 8 KV heads, 53248 / 8 = 6656, 32000 / 8 = 4000, 8 / 2 experts.
    assert ("per TP rank: heads 16, KV heads 1, ffn 6656, vocab rows 4000; "
            "experts per EP rank 4 of 8") in lines
    # A b300 moe layer: attention 2*16384^2 + 2*16384*8*128 = 570,425,344; norms 32,768;
    # router 16384*8 = 131,072; experts 8*3*16384*53248 = 20,937,965,568; total 21,508,554,752.
    # 32 layers = 688.27B; embedding (and head) 32000*16384 = 0.52B; final norm 16,384.
    assert "  stage 0: embed, L0-L31 (688.80B params)" in lines
    assert "  stage 1: L32-L63 (688.27B params)" in lines
    assert "  stage 2: L64-L95, norm, head (688.80B params)" in lines
    assert "  tp         6 x 8: [0-7] [8-15] [16-23] [24-31] [32-39] [40-47]" in lines
    assert _groups(report_48, "pp") == [
        [0, 16, 32], [1, 17, 33], [2, 18, 34], [3, 19, 35], [4, 20, 36], [5, 21, 37],
        [6, 22, 38], [7, 23, 39], [8, 24, 40], [9, 25, 41], [10, 26, 42], [11, 27, 43],
        [12, 28, 44], [13, 29, 45], [14, 30, 46], [15, 31, 47]]
    pairs = [[0, 8], [1, 9], [2, 10], [3, 11], [4, 12], [5, 13], [6, 14], [7, 15],
             [16, 24], [17, 25], [18, 26], [19, 27], [20, 28], [21, 29], [22, 30], [23, 31],
             [32, 40], [33, 41], [34, 42], [35, 43], [36, 44], [37, 45], [38, 46], [39, 47]]
    assert _groups(report_48, "dp") == pairs
    assert _groups(report_48, "ep") == pairs
    assert _groups(report_48, "expert dp") == [[r] for r in range(48)]
    # Untied embeddings: no embedding group to keep in sync.
    assert "embedding" not in report_48


def test_report_is_deterministic(report_48: str) -> None:
    cfg = get_preset("b300", "moe")
    again = dry_run(ParallelLayout.build(48, 8, 3, 2, 8, model_cfg=cfg, zero_stage=1), cfg)
    assert again == report_48


def test_tied_dense_and_single_expert_rows() -> None:
    dense = get_preset("debug", "dense")  # tied embeddings, 4 layers
    rows = _rows(dry_run(ParallelLayout.build(2, model_cfg=dense), dense))
    assert rows[1] == (0, 1, 0, 0, 1, 0, 1, "embed, L0-L3, norm, head (tied to embed)")

    hybrid = get_preset("debug", "hybrid")
    lay = ParallelLayout.build(16, 1, 2, 8, model_cfg=hybrid, zero_stage=1, pipeline_layers="1,3")
    report = dry_run(lay, hybrid)
    rows = _rows(report)
    # Rank 11: the default 8 ranks per node puts it on node 1, local 3; pp = 11 // 8 = 1,
    # dp = 3 = ep 3 (EP 8 = DP 8), so it holds expert 3 alone.
    assert rows[11] == (1, 3, 0, 1, 3, 3, 0, "L1-L3, norm, head (tied to embed), expert 3")
    assert rows[0][-1] == "embed, L0, expert 0"
    # Tied embeddings across stages: first and last stage of each pipeline group pair up.
    assert _groups(report, "embedding") == [[r, r + 8] for r in range(8)]


@pytest.mark.parametrize("ranks,text", [([0, 1, 2, 3], "0-3"), ([0, 8], "0,8"), ([5], "5"),
                                        ([0, 1, 5, 6, 7, 9], "0,1,5-7,9"), ([], "")])
def test_format_ranks(ranks: list[int], text: str) -> None:
    assert format_ranks(ranks) == text


def test_docs_example_is_what_dry_run_prints(report_48: str) -> None:
    """docs/parallelism.md quotes this report; an elided quote ("  ...") must still match it."""
    path = Path(__file__).resolve().parents[2] / "docs" / "parallelism.md"
    section = path.read_text().split("## Worked example", 1)[1]
    block = section.split("```\n", 2)[1].splitlines()
    quoted = [line for line in block if line != "  ..."]
    lines = iter(report_48.splitlines())
    # Every quoted line appears in the report, in the same order.
    assert all(any(q == line for line in lines) for q in quoted)
    assert len(quoted) > 30
