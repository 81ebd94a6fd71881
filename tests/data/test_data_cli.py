"""`lumina tokenizer train` and `lumina prepare-data` from the command line."""

from lumina.cli import main
from lumina.data import IndexedDataset, load_tokenizer
from tests.data.conftest import C4_SLICE


def test_train_a_tokenizer_then_prepare_with_it(tmp_path, capsys, c4_docs):
    model = tmp_path / "tok.model"
    assert (
        main(["tokenizer", "train", str(C4_SLICE), "--output", str(model), "--vocab-size", "400", "--max-docs", "100"])
        == 0
    )
    tok = load_tokenizer(str(model))
    assert tok.vocab_size == 400 and f"sha256 {tok.sha256}" in capsys.readouterr().out
    prefix = tmp_path / "out" / "c4"
    argv = [
        "prepare-data",
        str(C4_SLICE),
        "--output",
        str(prefix),
        "--tokenizer",
        str(model),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    ds = IndexedDataset(str(prefix))
    assert ds.num_docs == 200 and ds.document(3).tolist() == tok.encode(c4_docs[3]) + [tok.eos_id]


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["prepare-data", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lumina prepare-data: error:" in err and "none.jsonl: no such file" in err
    assert main(["tokenizer", "train", "--embedded", str(C4_SLICE)]) == 2
    assert "--embedded trains on the embedded corpus" in capsys.readouterr().err
    assert main(["tokenizer", "train", "c4", "--output", str(tmp_path / "t.model"), "--vocab-size", "300"]) == 2
    assert "give --max-docs" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
