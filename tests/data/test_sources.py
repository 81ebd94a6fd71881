"""Reading local inputs through `datasets`, and refusing bad ones by name before writing anything."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lumina.data.sources import DocumentReader, resolve_inputs


def read(inputs, **kwargs):
    with DocumentReader(resolve_inputs([str(i) for i in inputs]), **kwargs) as reader:
        return list(reader), reader.invalid_bytes


def jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "url": "u"}) + "\n" for t in texts), encoding="utf-8")
    return path


def test_every_local_format_reads_in_order(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    jsonl(folder / "a.jsonl", ["json one", "json two"])
    with gzip.open(folder / "b.json.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "gz doc"}) + "\n")
    pq.write_table(pa.table({"text": ["parquet doc"], "n": [1]}), folder / "c.parquet")
    (folder / "d.txt").write_text("text file\n\nwith two paragraphs\n", encoding="utf-8")
    (folder / "e.txt").write_text("second text file", encoding="utf-8")
    (folder / "notes.md").write_text("ignored: not an input type")
    (folder / ".hidden.jsonl").write_text('{"text": "ignored: hidden"}\n')
    single = jsonl(tmp_path / "z.jsonl", ["explicit file"])
    docs, invalid = read([folder, single])
    assert docs == [
        "json one",
        "json two",
        "gz doc",
        "parquet doc",
        "text file\n\nwith two paragraphs\n",
        "second text file",
        "explicit file",
    ]
    assert invalid == {}


def test_c4_slice_reads_exactly(c4_docs):
    from tests.data.conftest import C4_SLICE

    assert read([C4_SLICE])[0] == c4_docs


def test_other_text_field(tmp_path):
    assert read([jsonl(tmp_path / "a.jsonl", ["x"], field="content")], text_field="content")[0] == ["x"]
    with pytest.raises(
        ValueError, match=r"a.jsonl: record 0 has no text field 'text' \(fields: \['content', 'url'\]\)"
    ):
        read([tmp_path / "a.jsonl"])


def test_a_text_field_that_is_not_a_string_is_named_as_such(tmp_path):
    (tmp_path / "n.jsonl").write_text('{"text": "fine"}\n{"text": 12345}\n')
    with pytest.raises(ValueError, match=r"n.jsonl: record 1 has 'text' = 12345, a int; the text field must be a string"):
        read([tmp_path / "n.jsonl"])


@pytest.mark.parametrize("mode, expected", [("replace", "caf\ufffd \ufffd\ufffd ok"), ("skip", "caf  ok")])
def test_invalid_utf8_is_replaced_or_skipped_and_counted(tmp_path, mode, expected):
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "caf\xe9 \xff\xfe ok"}\n{"text": "fine"}\n')
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 \xff\xfe ok")
    with gzip.open(tmp_path / "bad.jsonl.gz", "wb") as f:
        f.write(b'{"text": "caf\xe9 \xff\xfe ok"}\n')
    docs, invalid = read(
        [tmp_path / "bad.jsonl", tmp_path / "bad.txt", tmp_path / "bad.jsonl.gz"], encoding_errors=mode
    )
    assert docs == [expected, "fine", expected, expected]
    assert invalid == {str(tmp_path / n): 3 for n in ("bad.jsonl", "bad.txt", "bad.jsonl.gz")}


def test_missing_empty_and_unsupported_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"nope.jsonl: no such file or directory"):
        resolve_inputs([str(tmp_path / "nope.jsonl")])
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.jsonl: file is empty"):
        resolve_inputs([str(tmp_path / "empty.jsonl")])
    (tmp_path / "dir").mkdir()
    with pytest.raises(ValueError, match=r"dir: directory has no input files \(accepted: .json, .jsonl"):
        resolve_inputs([str(tmp_path / "dir")])
    (tmp_path / "dir" / "only.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"dir: directory has no input files"):
        resolve_inputs([str(tmp_path / "dir")])
    with pytest.raises(ValueError, match=r"only.csv: unsupported file type \(accepted: .json"):
        resolve_inputs([str(tmp_path / "dir" / "only.csv")])
    (tmp_path / "dir" / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.txt: file is empty"):
        resolve_inputs([str(tmp_path / "dir")])


def test_corrupt_files_are_named(tmp_path):
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n' * 1000)[:-20])
    with pytest.raises(ValueError, match=r"cut.jsonl.gz: cannot read"):
        read([tmp_path / "cut.jsonl.gz"])
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": "unterminated\n')
    with pytest.raises(ValueError, match=r"broken.jsonl: cannot read records from 0 on"):
        read([tmp_path / "broken.jsonl"])


def test_unreachable_hub_is_one_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"allenai/c4 en validation on the Hugging Face hub: cannot open \(no route"):
        read(["c4:validation"])
