"""The one reader of users' JSON files: each failure is one DatasetError naming the file."""

from __future__ import annotations

import pytest

from lightning_prompts.callbacks.instruction_consistency import read_paraphrases
from lightning_prompts.errors import DatasetError
from lightning_prompts.utils.json_files import read_json

CASES = {
    "missing": (None, "Split file {path} does not exist."),
    "latin1": ('{"caf\xe9": 1}'.encode("latin-1"), "Split file {path} is not UTF-8 text (invalid continuation byte"),
    "cut": (b'{"train": [["a.jpg", 0, "cat"]', "Split file {path} is not valid JSON: "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_json_file_is_one_error_naming_it(case, tmp_path):
    content, message = CASES[case]
    path = tmp_path / "split.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DatasetError) as error:
        read_json(path, "Split file")
    assert str(error.value).startswith(message.format(path=path))


def test_paraphrase_files_are_read_as_utf8_and_a_latin1_one_is_refused_naming_it(tmp_path):
    path = tmp_path / "paraphrases.json"
    path.write_text('{"sentiment": ["Classify: ¿positive or négative?", "Is this review positive?"]}', "utf-8")
    assert read_paraphrases(path) == ["Classify: ¿positive or négative?", "Is this review positive?"]
    path.write_bytes('{"sentiment": ["d\xe9j\xe0 vu", "x"]}'.encode("latin-1"))
    with pytest.raises(DatasetError, match=f"Paraphrase file {path} is not UTF-8 text"):
        read_paraphrases(path)
