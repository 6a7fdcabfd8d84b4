"""Vocabulary parsing and its errors."""

from pathlib import Path

import pytest

from autolabel.errors import UsageError
from autolabel.vocab import DEFAULT_BACKGROUND, Vocabulary, load_vocabulary, parse_vocabulary


def test_parse_synonyms_comments_blank_lines_and_order() -> None:
    text = "# header\ncat\n\ntraffic light: stoplight, traffic signal  # x\ndog\n"
    vocab = parse_vocabulary(text)
    assert vocab.names == ["cat", "traffic light", "dog"]
    assert vocab.classes[1].prompts == ("traffic light", "stoplight", "traffic signal")
    assert vocab.background == DEFAULT_BACKGROUND


def test_background_directive_replaces_default_words() -> None:
    vocab = parse_vocabulary("cat\n!background: sky, grass\n")
    assert vocab.background == ("sky", "grass")
    assert parse_vocabulary("cat\n!background:\n").background == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no classes"),
        ("# only a comment\n\n", "no classes"),
        ("cat\ncat\n", "appears twice"),
        ("cat\nkitty: Cat\n", "appears twice"),
        (": a, b\n", "without a class name"),
        ("x" * 500 + "\n", "characters long"),
        ("sky\n!background: sky, wall\n", "also classes"),
    ],
)
def test_bad_vocabularies_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_vocabulary(text, "v.txt")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="latin1.txt: not UTF-8"):
        load_vocabulary(bad)
    with pytest.raises(UsageError, match="missing.txt: cannot read"):
        load_vocabulary(tmp_path / "missing.txt")


def test_fingerprint_tracks_content_and_round_trips() -> None:
    a = parse_vocabulary("cat\ndog: puppy\n")
    assert Vocabulary.from_dict(a.to_dict()) == a
    assert a.fingerprint() == parse_vocabulary("cat\ndog: puppy\n").fingerprint()
    assert a.fingerprint() != parse_vocabulary("dog: puppy\ncat\n").fingerprint()
    assert a.fingerprint() != a.with_background(("sky",)).fingerprint()
