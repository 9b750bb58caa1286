"""A Griffe extension for the documentation site: the docstrings' reStructuredText roles as Markdown.

The docstrings name other objects the way Sphinx does (``:class:`~vqflows.VQFlow```, ``:func:`fit```)
and hold a few ``.. math::`` blocks. This turns a role into inline code with the name a reader sees
(``~`` keeps the last part), a math block into a code block and a doctest into a
console block, so that the pages read cleanly.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|math|ref|doc|py:\w+):`(~?)([^`]+)`")
MATH = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)\n(?P<body>(?:(?P=indent)[ \t]+.*\n|[ \t]*\n)*)",
                  re.MULTILINE)


def _role(match: re.Match) -> str:
    short, target = match.group(1), match.group(2)
    if "<" in target and target.endswith(">"):  # :ref:`text <target>`
        target = target[: target.index("<")].strip()
    if short:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _math(match: re.Match) -> str:
    indent = match.group("indent")
    lines = [match.group("first")] + [line.strip() for line in match.group("body").splitlines()]
    body = "\n".join(indent + line for line in lines if line.strip())
    return f"{indent}```text\n{body}\n{indent}```\n\n"


DOCTEST = re.compile(r"^(?P<indent>[ \t]*)>>> .*\n?(?:(?P=indent)(?![ \t]*\n).*\n?)*", re.MULTILINE)


def _doctest(match: re.Match) -> str:
    indent = match.group("indent")
    return f"{indent}```pycon\n{match.group(0).rstrip()}\n{indent}```\n"


def markdown(text: str) -> str:
    """``text`` with roles as inline code, math blocks as code blocks and bare doctests as console blocks."""
    return ROLE.sub(_role, DOCTEST.sub(_doctest, MATH.sub(_math, text)))


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the loaded package (see the module)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
