"""A Griffe extension: Sphinx roles in docstrings become mkdocstrings cross-references.

The docstrings use Sphinx roles (``:class:`~threadlock.ThreadBusy```, ``:meth:``, ``:mod:``,
...). mkdocstrings renders Markdown, where those would show raw; this extension rewrites them
when Griffe loads the package, before rendering:

* a role whose target Griffe knows becomes ``[`ThreadBusy`][threadlock.ThreadBusy]``, a link
  that mkdocs-autorefs resolves (and that ``mkdocs build --strict`` checks);
* any other (``ValueError``, ``openai.AsyncOpenAI``, a private name) becomes plain code.

A target is looked up as written, then relative to the object and each of its parents, then
under ``threadlock``. ``~`` shows the last part only, as in Sphinx; ``:role:`text <target>```
shows ``text``.

Loaded from ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?P<role>class|meth|func|mod|attr|data|exc|obj|const|type):"
    r"`(?P<body>[^`]+)`"
)
_EXPLICIT = re.compile(r"^(?P<text>.+?)\s*<(?P<target>[^<>]+)>$")
_ROOT = "threadlock"


def _member(loader: griffe.GriffeLoader, path: str) -> Any:
    try:
        return loader.modules_collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _target(member: Any) -> str:
    """Where a link to ``member`` can land: an attribute without a docstring is not rendered
    (``show_if_no_docstring: false``), so its class is linked instead."""
    try:
        undocumented = member.is_attribute and not member.docstring
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        undocumented = False
    return member.parent.path if undocumented and member.parent is not None else member.path


def _scopes(obj: griffe.Object | griffe.Alias) -> list[str]:
    scopes: list[str] = []
    current: Any = obj
    while current is not None:
        scopes.append(current.path)
        current = current.parent
    return scopes


def resolve(target: str, obj: griffe.Object | griffe.Alias, loader: griffe.GriffeLoader) -> str | None:
    """The dotted path Griffe knows for ``target`` as seen from ``obj``, or ``None``."""
    name = target.lstrip(".")
    if name.split(".")[-1].startswith("_"):
        return None  # private: not rendered, so no link
    candidates = [name, *(f"{scope}.{name}" for scope in _scopes(obj)), f"{_ROOT}.{name}"]
    for candidate in candidates:
        if candidate.split(".")[0] != _ROOT:
            continue
        member = _member(loader, candidate)
        if member is not None:
            return _target(member)
    return None


def convert(text: str, obj: griffe.Object | griffe.Alias, loader: griffe.GriffeLoader) -> str:
    """``text`` with every Sphinx role replaced (see the module docstring)."""

    def replace(match: re.Match[str]) -> str:
        body = match["body"].strip()
        explicit = _EXPLICIT.match(body)
        if explicit:
            shown, target = explicit["text"], explicit["target"]
        else:
            target = body.lstrip("~!")
            shown = target.split(".")[-1] if body.startswith("~") else target
        target = target.lstrip("~!")
        if match["role"] in ("meth", "func") and not shown.endswith(")"):
            shown += "()"
        path = resolve(target, obj, loader)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    return ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles in every docstring of the loaded package."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = convert(obj.docstring.value, obj, loader)
