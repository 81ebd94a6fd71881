import json
import pathlib

import pytest

from lumina.data import load_tokenizer, prepare_dataset, train_tokenizer

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
C4_SLICE = FIXTURES / "c4_en_train00000_head_200.jsonl"


@pytest.fixture(scope="session")
def c4_docs() -> list[str]:
    return [json.loads(line)["text"] for line in C4_SLICE.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory, c4_docs):
    """A 512-piece BPE model of the C4 slice: trains in a fraction of a second."""
    return train_tokenizer(c4_docs, tmp_path_factory.mktemp("tok") / "small.model", vocab_size=512)


@pytest.fixture(scope="session")
def embedded_tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="session")
def c4_prefix(tmp_path_factory, small_tokenizer) -> str:
    """The C4 slice prepared with the small tokenizer, 64 documents a shard (4 shards)."""
    prefix = str(tmp_path_factory.mktemp("c4") / "c4")
    prepare_dataset([str(C4_SLICE)], prefix, small_tokenizer, docs_per_shard=64)
    return prefix
