"""YAML -> plain data plus the line of every node, so errors can say where they are.

PyYAML's `safe_load` forgets positions and lets a duplicate key silently win; composing the node
tree ourselves keeps both: each value's line by its path, and duplicate keys as errors.

A config is small, so the document is bounded (`MAX_CONFIG_BYTES`, `MAX_NODES`, `MAX_DEPTH`) and a
hostile one is refused with its line rather than exhausting memory or the stack. Anchors and
aliases are not expanded into copies: an aliased node is built once and the same object is shared
wherever it is used, while its expanded size still counts against `MAX_NODES` (a billion-laughs
document is a few hundred nodes that expand to billions).
"""

from __future__ import annotations

from typing import Any

import yaml

from agent.errors import ConfigIssue

Path = tuple[str | int, ...]

#: A config is a few KiB; anything past this is not one.
MAX_CONFIG_BYTES = 1024 * 1024
#: Values in the document as used, aliases counted as the copies they stand for.
MAX_NODES = 100_000
#: Nesting of mappings and lists (a real config nests five or six deep).
MAX_DEPTH = 64

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DocumentRefused(Exception):
    """The document is too large, too deep or recursive: `message`, at 1-based `line`."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


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


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents with too many nodes or nested too deeply while it
    composes them (its composer recurses once per level)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise DocumentRefused(f"more than {MAX_NODES:,} values in one config", line)
        if self._depth >= MAX_DEPTH:
            raise DocumentRefused(_too_deep(), line)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _too_deep() -> str:
    return f"nested deeper than {MAX_DEPTH} levels (a config needs a handful)"


def parse_yaml(text: str, filename: str) -> MarkedDocument:
    """Parse one YAML document. Syntax errors, duplicate keys and documents past the bounds come
    back as issues, not raised."""
    issues: list[ConfigIssue] = []
    lines: dict[Path, int] = {}
    if len(text) > MAX_CONFIG_BYTES:
        at = text.count("\n", 0, MAX_CONFIG_BYTES) + 1
        issues.append(ConfigIssue("", _too_large(), line=at, file=filename))
        return MarkedDocument(None, lines, issues)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return MarkedDocument({}, lines, issues)
        data = _Builder(loader, lines, issues, filename).build(node, (), 0)
    except DocumentRefused as exc:
        issues.append(ConfigIssue("", exc.message, line=exc.line, file=filename))
        return MarkedDocument(None, {}, issues)
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


def _too_large() -> str:
    return f"the config file is larger than {MAX_CONFIG_BYTES // 1024:,} KiB (a config needs a few)"


class _Built:
    """A node built once: its value, its size as expanded, and its height."""

    __slots__ = ("height", "size", "value")

    def __init__(self, value: Any, size: int, height: int) -> None:
        self.value = value
        self.size = size
        self.height = height


class _Builder:
    """Nodes -> plain data, each node built once (memoised by identity): an alias yields the very
    object its anchor built, so nothing is copied, while `expanded` counts what it stands for."""

    def __init__(
        self,
        loader: yaml.SafeLoader,
        lines: dict[Path, int],
        issues: list[ConfigIssue],
        filename: str,
    ) -> None:
        self._loader = loader
        self._lines = lines
        self._issues = issues
        self._filename = filename
        self._built: dict[int, _Built] = {}
        self._building: set[int] = set()
        self._merging: set[int] = set()
        self._flat: dict[int, list[tuple[yaml.Node, yaml.Node]]] = {}
        self.expanded = 0

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        return self._node(node, path, depth).value

    def _node(self, node: yaml.Node, path: Path, depth: int) -> _Built:
        line = node.start_mark.line + 1
        key = id(node)
        if key in self._building:
            raise DocumentRefused(
                f"the anchor on line {line} is used inside itself (a recursive alias)", line
            )
        done = self._built.get(key)
        if done is not None:
            self.expanded += done.size
            if self.expanded > MAX_NODES:
                raise DocumentRefused(
                    f"the config expands to more than {MAX_NODES:,} values through anchors and "
                    f"aliases (the anchor on line {line} is repeated; write the values out, or "
                    "alias less)",
                    line,
                )
            if depth + done.height > MAX_DEPTH:
                raise DocumentRefused(_too_deep() + " through aliases", line)
            return done
        self._lines.setdefault(path, line)
        if depth >= MAX_DEPTH:
            raise DocumentRefused(_too_deep(), line)
        self.expanded += 1
        if self.expanded > MAX_NODES:
            raise DocumentRefused(f"more than {MAX_NODES:,} values in one config", line)
        before = self.expanded
        self._building.add(key)
        try:
            value, height = self._value(node, path, depth)
        finally:
            self._building.discard(key)
        built = _Built(value, self.expanded - before + 1, height)
        self._built[key] = built
        return built

    def _value(self, node: yaml.Node, path: Path, depth: int) -> tuple[Any, int]:
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            height = 0
            for key_node, value_node in self._pairs(node):
                skey = self._key(key_node, path)
                if skey is None:
                    continue
                child = (*path, skey)
                if skey in out:
                    self._issue(
                        child, f"duplicate key (first given on line {self._lines[child]})", key_node
                    )
                    continue
                built = self._node(value_node, child, depth + 1)
                out[skey] = built.value
                self._lines[child] = key_node.start_mark.line + 1
                height = max(height, built.height)
            return out, height + 1
        if isinstance(node, yaml.SequenceNode):
            items = []
            height = 0
            for i, item in enumerate(node.value):
                built = self._node(item, (*path, i), depth + 1)
                items.append(built.value)
                height = max(height, built.height)
            return items, height + 1
        return self._loader.construct_object(node, deep=True), 1

    def _key(self, key_node: yaml.Node, path: Path) -> str | None:
        key = (
            self._loader.construct_object(key_node, deep=True)
            if isinstance(key_node, yaml.ScalarNode)
            else key_node
        )
        if not isinstance(key, str | int | float | bool) or key is None:
            shown = repr(key) if isinstance(key_node, yaml.ScalarNode) else f"a {_kind(key_node)}"
            self._issue(path, f"mapping keys must be plain strings, got {shown}", key_node)
            return None
        return str(key)

    def _issue(self, path: Path, message: str, node: yaml.Node) -> None:
        """Record a problem at `path`, on the line where `node` starts."""
        self._issues.append(
            ConfigIssue(
                format_path(path), message, line=node.start_mark.line + 1, file=self._filename
            )
        )

    def _pairs(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node]]:
        """`node`'s key/value pairs with `<<:` merge keys resolved as safe_load does (own keys win,
        then the first merged mapping that has the key), each key once: nested merges of merges
        stay as small as the keys they hold (PyYAML's flatten_mapping multiplies them)."""
        done = self._flat.get(id(node))
        if done is not None:
            return done
        own: list[tuple[yaml.Node, yaml.Node]] = []
        merged: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                own.append((key_node, value_node))
                continue
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            for src in sources:
                if not isinstance(src, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"expected a mapping (or a list of them) for merging, found a {_kind(src)}",
                        src.start_mark,
                    )
                if id(src) in self._building or id(src) in self._merging:
                    line = src.start_mark.line + 1
                    raise DocumentRefused(
                        f"the anchor on line {line} is used inside itself (a recursive merge)", line
                    )
                self._merging.add(id(node))
                try:
                    pairs = self._pairs(src)
                finally:
                    self._merging.discard(id(node))
                for pair in pairs:
                    merged.setdefault(_key_of(pair[0]), pair)
        own_keys = {_key_of(k) for k, _ in own}
        out = [p for k, p in merged.items() if k not in own_keys] + own
        self._flat[id(node)] = out
        return out


def _kind(node: yaml.Node) -> str:
    return "mapping" if isinstance(node, yaml.MappingNode) else "list"


def _key_of(node: yaml.Node) -> Any:
    return (node.tag, node.value) if isinstance(node, yaml.ScalarNode) else id(node)
