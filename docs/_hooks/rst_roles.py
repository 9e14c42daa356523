"""Griffe extension: the docstrings' Sphinx roles and literal blocks, as Markdown.

trimicro's docstrings are written for readers of the source and for ``help()``: they name
other objects with Sphinx roles (``:class:`~trimicro.cluster.Cluster```) and introduce code
with ``::``. mkdocstrings renders docstrings as Markdown, where a role would show as its raw
text. This extension rewrites each role as inline code of the name a reader would see (the
last component for ``~``, the title for ``title <target>``), and a paragraph's closing ``::``
as ``:`` (the indented block after it is already a Markdown code block). Names stay plain code
rather than links: many point into private modules the reference does not render, and a
link that does not resolve fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|mod|func|meth|attr|data|exc|obj|const|term|ref):`([^`]+)`")
LITERAL_BLOCK = re.compile(r"(\S)::$", re.M)


def _name(target: str) -> str:
    titled = re.fullmatch(r"(.+?)\s*<[^>]+>", target)
    if titled:
        return titled.group(1)
    if target.startswith("~"):
        return target[1:].rsplit(".", 1)[-1]
    return target.lstrip(".")


def markdown(text: str) -> str:
    text = ROLE.sub(lambda m: f"`{_name(m.group(1))}`", text)
    return LITERAL_BLOCK.sub(r"\1:", text)


class RstRoles(griffe.Extension):
    """Rewrites every docstring as it is loaded (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
