"""docs/testing.md: its examples are the files in examples/testing, and they pass."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples" / "testing").glob("test_*.py"))


def test_every_example_is_in_the_doc_verbatim() -> None:
    doc = (ROOT / "docs" / "testing.md").read_text()
    assert len(EXAMPLES) == 3
    for example in EXAMPLES:
        assert f"```python\n{example.read_text().rstrip()}\n```" in doc, example.name


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_the_example_passes_as_a_users_test_file(pytester: pytest.Pytester,
                                                 example: Path) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n"
                     "asyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(**{example.stem: example.read_text()})
    result = pytester.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 2 and set(outcomes) <= {"passed", "warnings"}, \
        result.stdout.str()
