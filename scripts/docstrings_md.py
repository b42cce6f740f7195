"""Convert reStructuredText markup in docstrings to the Markdown mkdocstrings renders.

meshlib's docstrings use Google style with Markdown (``docstring_style: google``
in mkdocs.yml): backticks for code, "Added in version X." sentences, fenced
code blocks. This script rewrites the reST constructs older docstrings use,
mechanically, in every docstring under ``src/`` (module, class, function and
attribute docstrings; nothing else in the source is touched):

* roles: ``:class:`~meshlib.Policy``` -> ```Policy```, ``:meth:`Call.stamp```
  -> ```Call.stamp()```, ``:mod:``, ``:func:``, ``:attr:``, ``:data:``,
  ``:exc:``, ``:obj:``, ``:const:`` alike (an explicit title, ``title <target>``,
  keeps the title);
* inline literals: double backticks -> single backticks;
* ``.. versionadded:: X`` -> ``Added in version X.``; ``.. versionchanged:: X``
  with its indented text -> ``Changed in version X: text``; ``.. deprecated::``
  -> ``Deprecated since version X: text``;
* literal blocks: a paragraph ending in ``::`` followed by an indented block
  -> the paragraph ending in ``:`` and the block fenced with three backticks;
* ``:param name: text`` fields -> a Google ``Args:`` section.

Usage::

    python scripts/docstrings_md.py           # rewrite the files in place
    python scripts/docstrings_md.py --check   # exit 1, naming the files, if any would change

Running it twice changes nothing the second time.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

_ROLE = re.compile(r":(?:py:)?(class|meth|func|mod|attr|data|exc|obj|const):`([^`]+)`")
_LITERAL = re.compile(r"``([^`]+?)``")
_DIRECTIVE = re.compile(r"^(\s*)\.\. (versionadded|versionchanged|deprecated)::\s*(\S*)\s*(.*)$")
_PARAM = re.compile(r"^(\s*):param\s+(\w+):\s*(.*)$")
#: the width a joined directive's text is wrapped to (ruff's line length, less the quotes)
_WIDTH = 96
_WORDS = {"versionadded": "Added in version", "versionchanged": "Changed in version",
          "deprecated": "Deprecated since version"}


def _role(match: re.Match[str]) -> str:
    kind, target = match.group(1), match.group(2).strip()
    titled = re.fullmatch(r"(.+?)\s*<([^<>]+)>", target)
    if titled is not None:
        return f"`{titled.group(1)}`"
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    if kind in ("meth", "func") and not target.endswith(")"):
        target += "()"
    return f"`{target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def convert_inline(text: str) -> str:
    """Roles and double-backtick literals of one piece of text, as Markdown code."""
    return _LITERAL.sub(r"`\1`", _ROLE.sub(_role, text))


def _directives(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent, kind, version, rest = match.groups()
        words = [rest] if rest else []
        i += 1
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) > len(indent):
            words.append(lines[i].strip())
            i += 1
        text = " ".join(words)
        if not text:
            out.append(f"{indent}{_WORDS[kind]} {version}.")
            continue
        sentence = text if text.endswith((".", "!", "?")) else text + "."
        out.extend(textwrap.wrap(f"{_WORDS[kind]} {version}: {sentence}", _WIDTH,
                                 initial_indent=indent, subsequent_indent=indent,
                                 break_long_words=False, break_on_hyphens=False))
    return out


def _literal_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.rstrip()
        if not stripped.endswith("::") or stripped.endswith(":::"):
            out.append(line)
            i += 1
            continue
        # the block: after blank lines, lines indented deeper than the paragraph
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        base = _indent(line)
        if j >= len(lines) or _indent(lines[j]) <= base:
            out.append(line)
            i += 1
            continue
        end = j
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
            end += 1
        while end > j and not lines[end - 1].strip():
            end -= 1
        block = lines[j:end]
        deeper = min(_indent(b) for b in block if b.strip())
        head = stripped[:-2].rstrip()
        if head.strip():
            out.append(head + ":" if not stripped.endswith(" ::") else head)
            out.append("")
        pad = " " * base
        out.append(pad + "```")
        out.extend(pad + b[deeper:] if b.strip() else "" for b in block)
        out.append(pad + "```")
        i = end
    return out


def _params(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _PARAM.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent = match.group(1)
        out.append(f"{indent}Args:")
        while i < len(lines) and (match := _PARAM.match(lines[i])) is not None \
                and match.group(1) == indent:
            out.append(f"{indent}    {match.group(2)}: {match.group(3)}".rstrip())
            i += 1
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > len(indent) \
                    and _PARAM.match(lines[i]) is None:
                out.append(f"{indent}        {lines[i].strip()}")
                i += 1
    return out


def convert_docstring(text: str) -> str:
    """One docstring's raw text (between its quotes), in Markdown."""
    lines = text.split("\n")
    lines = _directives(lines)
    lines = _literal_blocks(lines)
    lines = _params(lines)
    inside_fence = False
    converted = []
    for line in lines:
        if line.strip() == "```":
            inside_fence = not inside_fence
        converted.append(line if inside_fence else convert_inline(line))
    return "\n".join(converted)


def _docstrings(tree: ast.Module) -> Iterator[ast.Constant]:
    """Every string statement of a module, class or function body: docstrings,
    and the attribute docstrings mkdocstrings shows."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for statement in body:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
                    and isinstance(statement.value.value, str):
                yield statement.value


def convert_source(source: str) -> str:
    """``source`` with each docstring converted; everything else unchanged."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    spans = []
    for node in _docstrings(tree):
        assert node.end_lineno is not None and node.end_col_offset is not None
        start = offsets[node.lineno - 1] + len(
            lines[node.lineno - 1].encode()[:node.col_offset].decode())
        end = offsets[node.end_lineno - 1] + len(
            lines[node.end_lineno - 1].encode()[:node.end_col_offset].decode())
        spans.append((start, end))
    result = source
    for start, end in sorted(spans, reverse=True):
        literal = result[start:end]
        match = re.fullmatch(r'([rRuU]?)("""|\'\'\'|"|\')(.*)\2', literal, re.DOTALL)
        if match is None:
            continue  # implicitly concatenated strings: left alone
        prefix, quote, body = match.groups()
        new = convert_docstring(body)
        if new != body:
            result = result[:start] + prefix + quote + new + quote + result[end:]
    return result


def main(argv: list[str] | None = None) -> int:
    """Rewrite every ``.py`` file under ``src/`` (or with ``--check``, only report)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 naming the files that would change")
    parser.add_argument("paths", nargs="*", type=Path, help="files (default: src/**/*.py)")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(SRC.rglob("*.py"))
    changed = []
    for path in paths:
        source = path.read_text(encoding="utf-8")
        new = convert_source(source)
        if new != source:
            changed.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in changed:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{'would convert' if args.check else 'converted'} {shown}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
