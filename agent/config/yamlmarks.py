"""YAML -> plain data plus the line of every node, so errors can say where they are.

PyYAML's `safe_load` forgets positions and lets a duplicate key silently win; composing the node
tree ourselves keeps both: each value's line by its path, and duplicate keys as errors.
"""

from __future__ import annotations

from typing import Any

import yaml

from agent.errors import ConfigIssue

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """`("sources", 0, "format")` -> `sources[0].format`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class MarkedDocument:
    """A parsed YAML document: `data` (dicts, lists, scalars) and `lines` (path -> 1-based line)."""

    __slots__ = ("data", "issues", "lines")

    def __init__(self, data: Any, lines: dict[Path, int], issues: list[ConfigIssue]) -> None:
        self.data = data
        self.lines = lines
        self.issues = issues

    def line_of(self, path: Path) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        while True:
            line = self.lines.get(path)
            if line is not None or not path:
                return line
            path = path[:-1]


def parse_yaml(text: str, filename: str) -> MarkedDocument:
    """Parse one YAML document. Syntax errors and duplicate keys come back as issues, not raised."""
    loader = yaml.SafeLoader(text)
    lines: dict[Path, int] = {}
    issues: list[ConfigIssue] = []
    try:
        node = loader.get_single_node()
        if node is None:
            return MarkedDocument({}, lines, issues)
        data = _build(loader, node, (), lines, issues, filename)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or "invalid YAML"
        if exc.context:
            what = f"{exc.context}: {what}"
        issues.append(ConfigIssue("", f"invalid YAML: {what}", line=line, file=filename))
        return MarkedDocument(None, lines, issues)
    except yaml.YAMLError as exc:
        issues.append(ConfigIssue("", f"invalid YAML: {exc}", file=filename))
        return MarkedDocument(None, lines, issues)
    finally:
        loader.dispose()
    return MarkedDocument(data, lines, issues)


def _build(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Path,
    lines: dict[Path, int],
    issues: list[ConfigIssue],
    filename: str,
) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<:` merge keys the way safe_load does
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                issues.append(
                    ConfigIssue(
                        format_path(path),
                        f"mapping keys must be plain strings, got {key!r}",
                        line=key_node.start_mark.line + 1,
                        file=filename,
                    )
                )
                continue
            skey = str(key)
            if skey in out:
                issues.append(
                    ConfigIssue(
                        format_path((*path, skey)),
                        f"duplicate key (first given on line {lines[(*path, skey)]})",
                        line=key_node.start_mark.line + 1,
                        file=filename,
                    )
                )
                continue
            child = (*path, skey)
            out[skey] = _build(loader, value_node, child, lines, issues, filename)
            lines[child] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(loader, item, (*path, i), lines, issues, filename)
            for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)
