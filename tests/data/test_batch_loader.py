"""The loader: exact windows, seeded order, disjoint ranks, exact resumption, weighted blending."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lumina.data import BatchLoader, IndexedDataset, parse_data_path

SEQ = 64


def loader(prefix, **kwargs):
    args = dict(prefixes=[prefix], weights=None, seq_length=SEQ, micro_batch_size=4, dp_rank=0, dp_size=1, seed=7)
    args.update(kwargs)
    return BatchLoader(**args)


def window_index(prefix):
    """window content -> window number, for naming the windows a loader hands out."""
    stream = IndexedDataset(prefix).tokens(0, IndexedDataset(prefix).num_tokens).astype(np.int64)
    n = (len(stream) - 1) // SEQ
    return {stream[k * SEQ : k * SEQ + SEQ + 1].tobytes(): k for k in range(n)}, n


def test_one_epoch_visits_every_window_once(c4_prefix):
    index, n = window_index(c4_prefix)
    ld = loader(c4_prefix, micro_batch_size=8)
    assert ld.windows == [n] and ld.tokens_per_epoch == n * SEQ
    seen = []
    for _ in range(n // 8):
        batch = ld.next_batch()
        assert batch.shape == (8, SEQ + 1) and batch.dtype == torch.int64
        seen += [index[row.numpy().tobytes()] for row in batch]
    assert len(set(seen)) == len(seen) == n // 8 * 8
    assert ld.state_dict()["datasets"][0]["epoch"] == 0


def test_order_is_fixed_by_the_seed(c4_prefix):
    a, b, c = loader(c4_prefix), loader(c4_prefix), loader(c4_prefix, seed=8)
    batches_a = [a.next_batch() for _ in range(3)]
    assert all(torch.equal(x, b.next_batch()) for x in batches_a)
    assert not all(torch.equal(x, c.next_batch()) for x in batches_a)


def test_ranks_split_the_global_batch_without_overlap(c4_prefix):
    whole = loader(c4_prefix, micro_batch_size=6)
    ranks = [loader(c4_prefix, micro_batch_size=2, dp_rank=r, dp_size=3) for r in range(3)]
    index, _ = window_index(c4_prefix)
    seen = []
    for _ in range(5):
        parts = [rk.next_batch() for rk in ranks]
        assert torch.equal(torch.cat(parts), whole.next_batch())
        seen += [index[row.numpy().tobytes()] for part in parts for row in part]
    assert len(set(seen)) == len(seen)


def test_resumed_loader_reads_what_the_uninterrupted_one_reads(c4_prefix):
    # 2 datasets, several epochs of the smaller one: the state has to carry epochs and positions
    kwargs = dict(
        prefixes=[c4_prefix, c4_prefix], weights=[0.8, 0.2], micro_batch_size=4, split="valid", valid_fraction=0.02
    )
    straight = loader(c4_prefix, **kwargs)
    for _ in range(30):
        straight.next_batch()
    state = json.loads(json.dumps(straight.state_dict()))
    assert state["datasets"][0]["epoch"] >= 1
    expected = [straight.next_batch() for _ in range(40)]
    resumed = loader(c4_prefix, **kwargs)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, resumed.next_batch()) for x in expected)
    # the state is per global sample, so a different data-parallel layout resumes it too
    ranks = [loader(c4_prefix, **{**kwargs, "micro_batch_size": 2, "dp_rank": r, "dp_size": 2}) for r in range(2)]
    for rk in ranks:
        rk.load_state_dict(state)
    for x in expected[:5]:
        assert torch.equal(torch.cat([rk.next_batch() for rk in ranks]), x)


def taken(ld):
    return np.array([d["epoch"] * d["windows"] + d["position"] for d in ld.state_dict()["datasets"]])


def test_blend_of_three_stays_within_one_sample_of_the_weights(c4_prefix):
    ld = loader(c4_prefix, prefixes=[c4_prefix] * 3, weights=[5, 3, 2], micro_batch_size=7)
    for step in range(1, 60):
        ld.next_batch()
        assert taken(ld).sum() == 7 * step
        assert np.abs(taken(ld) - np.array([0.5, 0.3, 0.2]) * 7 * step).max() <= 1, (step, taken(ld))


@settings(max_examples=25, deadline=None)
@given(weights=st.lists(st.floats(0.01, 100), min_size=2, max_size=6))
def test_blend_tolerance_for_any_weights(c4_prefix, weights):
    # stated tolerance: never a whole sample ahead of the exact share, never 1.5 samples behind
    ld = loader(c4_prefix, prefixes=[c4_prefix] * len(weights), weights=weights, micro_batch_size=1)
    share = np.array(weights) / sum(weights)
    for n in range(1, 200):
        ld.next_batch()
        error = taken(ld) - share * n
        assert error.max() < 1 and error.min() > -1.5, (n, error)


def test_blend_draws_rows_from_each_dataset(c4_prefix, tmp_path, small_tokenizer):
    from lumina.data import prepare_dataset

    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": f"line {i} " * 40}) + "\n" for i in range(50)))
    prepare_dataset([str(other)], str(tmp_path / "other"), small_tokenizer)
    c4_index, _ = window_index(c4_prefix)
    ld = loader(c4_prefix, prefixes=[c4_prefix, str(tmp_path / "other")], weights=[0.75, 0.25], micro_batch_size=8)
    rows = torch.cat([ld.next_batch() for _ in range(10)])
    from_c4 = sum(row.numpy().tobytes() in c4_index for row in rows)
    assert from_c4 == 60  # exactly 3 of every 4 samples


def test_validation_split_is_by_document(c4_prefix):
    ds = IndexedDataset(c4_prefix)
    train = loader(c4_prefix, split="train", valid_fraction=0.1)
    valid = loader(c4_prefix, split="valid", valid_fraction=0.1)
    boundary = ds.doc_token_offset(180)  # the last 20 of 200 documents
    assert train.windows == [(boundary - 1) // SEQ] and valid.windows == [(ds.num_tokens - boundary - 1) // SEQ]
    valid_stream = ds.tokens(boundary, ds.num_tokens).astype(np.int64)
    valid_windows = {valid_stream[k * SEQ : k * SEQ + SEQ + 1].tobytes() for k in range(valid.windows[0])}
    for _ in range(5):
        assert all(row.numpy().tobytes() in valid_windows for row in valid.next_batch())
        assert not any(row.numpy().tobytes() in valid_windows for row in train.next_batch())


def test_bad_settings_are_named(c4_prefix, small_tokenizer):
    n = IndexedDataset(c4_prefix).num_tokens
    with pytest.raises(
        ValueError, match=rf"c4: {n} tokens in split 'all', fewer than one window of seq_length \+ 1 = {n + 1}"
    ):
        loader(c4_prefix, seq_length=n)
    with pytest.raises(ValueError, match=r"c4: tokenized with \w+, expected tokenizer 000000000000"):
        loader(c4_prefix, tokenizer_sha256="0" * 64)
    loader(c4_prefix, tokenizer_sha256=small_tokenizer.sha256)
    with pytest.raises(ValueError, match=r"c4: tokenizer vocab 512 exceeds the model's vocab 256"):
        loader(c4_prefix, vocab_size=256)
    with pytest.raises(ValueError, match=r"dp_rank 2: must be in \[0, 2\)"):
        loader(c4_prefix, dp_rank=2, dp_size=2)
    with pytest.raises(ValueError, match=r"1 weights for 2 datasets"):
        loader(c4_prefix, prefixes=[c4_prefix, c4_prefix], weights=[1.0])
    with pytest.raises(ValueError, match=r"split 'valid' needs valid_fraction > 0"):
        loader(c4_prefix, split="valid")
    other_seed = loader(c4_prefix, seed=1)
    with pytest.raises(ValueError, match=r"loader state has seed 1, this loader has 7"):
        loader(c4_prefix).load_state_dict(other_seed.state_dict())
    with pytest.raises(ValueError, match=r"loader state has windows"):
        loader(c4_prefix).load_state_dict(loader(c4_prefix, split="train", valid_fraction=0.5).state_dict())


def test_parse_data_path():
    assert parse_data_path(["data/c4"]) == (["data/c4"], None)
    assert parse_data_path(["a", "b"]) == (["a", "b"], None)
    assert parse_data_path(["0.7", "a", "3", "b"]) == (["a", "b"], [0.7, 3.0])
    with pytest.raises(ValueError, match=r"weights and prefixes must pair up"):
        parse_data_path(["0.7", "a", "b"])
    with pytest.raises(ValueError, match=r"data path weight '-1' for b: must be a positive number"):
        parse_data_path(["1", "a", "-1", "b"])
    with pytest.raises(ValueError, match=r"data path weight 'x' for b"):
        parse_data_path(["1", "a", "x", "b"])
    with pytest.raises(ValueError, match=r"data path is empty"):
        parse_data_path([])
