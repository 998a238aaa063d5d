"""MkDocs hooks that make docs/ a site without changing how the pages read on a forge.

- The recipes and files under ``contrib/`` become part of the site (``contrib/...``), so a
  page's link to ``../contrib/postfix/milter.md`` works there as it does in the repository,
  and ``--strict`` checks it like any other link.
- ``reference/hooks.md`` is written from ``mailgate.hookspecs`` at build time: the hook
  reference is the code's own docstrings, never a copy that drifts.

MkDocs loads this file by path (``hooks:`` in mkdocs.yml); it is not part of the package.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"
CONTRIB_FILES = ("*.md", "*.json", "*.service", "*.toml")
HOOKS_PAGE = "reference/hooks.md"

_LINK_OUT_OF_DOCS = re.compile(r"(\]\()((?:\.\./)+)(contrib/)")
_LINK_INTO_DOCS = re.compile(r"(\]\()((?:\.\./)+)docs/")
_ROLE = re.compile(r":(?:class|func|meth|mod|attr):`~?([^`]+)`")
_PARAM = re.compile(r"^:(?:param (\w+)|(return)):", re.M)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add contrib's recipes and files, and the generated hook reference."""
    for pattern in CONTRIB_FILES:
        for path in sorted(CONTRIB.rglob(pattern)):
            if any(
                part in {"build", "__pycache__"} or part.endswith(".egg-info")
                for part in path.parts
            ):
                continue
            uri = path.relative_to(ROOT).as_posix()
            files.append(
                File(
                    uri,
                    src_dir=str(ROOT),
                    dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls,
                )
            )
    files.append(File.generated(config, HOOKS_PAGE, content=hook_reference()))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Links that leave docs/ in the repository, as the site lays the same files out."""
    if page.file.src_uri.startswith("contrib/"):
        # contrib/x/y.md -> ../../docs/z.md in the repository is ../../z.md on the site.
        return _LINK_INTO_DOCS.sub(lambda m: f"{m.group(1)}{m.group(2)}", markdown)
    # docs/a.md -> ../contrib/... in the repository is contrib/... on the site.
    return _LINK_OUT_OF_DOCS.sub(lambda m: f"{m.group(1)}{m.group(2)[3:]}{m.group(3)}", markdown)


def hook_reference() -> str:
    """The hook reference page: the contract's rules, then every hook in calling order."""
    from mailgate import hookspecs

    lines = [
        "# Hook reference",
        "",
        "Generated from `core/hookspecs.py` when the site is built. How to write a plugin:",
        "[writing plugins](../writing-plugins.md).",
        "",
        _markdown(inspect.getdoc(hookspecs) or ""),
        "",
        "## The plugin class",
        "",
        _markdown(inspect.getdoc(hookspecs.PluginClass) or ""),
        "",
        "## Hooks",
        "",
    ]
    for name, spec in _hookspecs(hookspecs):
        first = " (first result wins)" if _firstresult(spec) else ""
        lines += [
            f"### `{name}`{first}",
            "",
            "```python",
            f"def {name}({_parameters(spec)}) -> {_returns(spec)}",
            "```",
            "",
            _markdown(inspect.getdoc(spec) or ""),
            "",
        ]
    return "\n".join(lines)


def _parameters(function: Any) -> str:
    """The parameters as written in the source (annotations are strings there)."""
    parameters = inspect.signature(function).parameters.values()
    return ", ".join(f"{p.name}: {_annotation(p.annotation)}" for p in parameters)


def _returns(function: Any) -> str:
    return _annotation(inspect.signature(function).return_annotation)


def _annotation(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _hookspecs(module: Any) -> list[tuple[str, Any]]:
    found = [
        (name, value)
        for name, value in vars(module).items()
        if inspect.isfunction(value) and _is_hookspec(value)
    ]
    return sorted(found, key=lambda item: item[1].__code__.co_firstlineno)


def _is_hookspec(function: Any) -> bool:
    return any(attr.endswith("_spec") for attr in vars(function))


def _firstresult(function: Any) -> bool:
    for attr, value in vars(function).items():
        if attr.endswith("_spec") and isinstance(value, dict):
            return bool(value.get("firstresult"))
    return False


def _markdown(docstring: str) -> str:
    """A reST-flavoured docstring as Markdown: roles as code, ``literals`` as code, ``::``
    blocks as indented code, ``:param x:`` as a bold lead."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", docstring)
    text = text.replace("``", "`")
    text = _PARAM.sub(lambda m: f"- **{m.group(1) or 'returns'}**:", text)
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        if in_block and line and not line.startswith(" "):
            in_block = False
        if line.rstrip().endswith("::"):
            out.append(line.rstrip()[:-1])
            out.append("")
            in_block = True
            continue
        out.append(line)
    return "\n".join(out)
