"""Reading registry answers: one reader for "a JSON object or a named failure"."""

from __future__ import annotations

import pytest

from meshlib._discovery._http import BadAnswer, json_object, json_value


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "the answer is not JSON: '{not json'"),
    (b"\xff\xfe", "the answer is not JSON"),
    ("[" * 100_000, "the answer is nested too deeply to read"),
    ('{"a": ' * 100_000, "the answer is nested too deeply to read"),
])
def test_what_does_not_parse_is_a_named_failure(text: str | bytes, says: str) -> None:
    """Garbage, bad UTF-8 and nesting deeper than the parser goes are all BadAnswer
    naming what was read: no RecursionError or UnicodeDecodeError gets out."""
    with pytest.raises(BadAnswer) as caught:
        json_value(text, "the answer")
    assert says in str(caught.value)


def test_json_object_wants_an_object() -> None:
    """An object is returned as it is; any other JSON value is a named failure."""
    assert json_object(b'{"kvs": []}', "the answer") == {"kvs": []}
    with pytest.raises(BadAnswer, match="the answer is not a JSON object: \\[1, 2\\]"):
        json_object("[1, 2]", "the answer")
    assert json_value("[1, 2]", "the answer") == [1, 2]
