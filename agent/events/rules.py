"""`events.rules` (SPEC §3.3): which records a rule matches, and the templates it renders.

- `match` tests fields: a string is equality, or a glob when it contains `*?[`; a list means any of
  its values; `{regex: …}` is a full match; `status` also accepts `2xx`-style classes.
- Templates (`"{query.plan}"`, `"Plan {plan}"`) render as absent when any field they name is
  missing, null or empty — even inside literal text. A template that is exactly one field keeps the
  field's type (a number stays a number in properties and traits).

Matching and rendering take a field getter, so the same rule code serves access records (fields
of SPEC §2) and app records (their own keys, dotted names reaching into nested JSON).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config.schema import IdentifyAction, LogoutAction, RuleConfig

Getter = Callable[[str], Any]
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")
_GLOB = re.compile(r"[*?\[]")
_STATUS_CLASS = re.compile(r"^[1-5]xx$")


def canonical(value: Any) -> str | None:
    """The text a field value is compared and rendered as (None when absent)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float):
        return str(value)
    return None  # objects and lists are not comparable values


class Template:
    """A compiled `{field}` template."""

    __slots__ = ("_fields", "_parts", "_single", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[tuple[bool, str]] = []  # (is_field, literal text or field name)
        pos = 0
        for m in _FIELD.finditer(text):
            if m.start() > pos:
                parts.append((False, text[pos : m.start()]))
            token = m.group(0)
            if token in ("{{", "}}"):
                parts.append((False, token[0]))
            else:
                parts.append((True, m.group(1).strip()))
            pos = m.end()
        if pos < len(text):
            parts.append((False, text[pos:]))
        self._parts = parts
        self._fields = [name for is_field, name in parts if is_field]
        self._single = parts[0][1] if len(parts) == 1 and parts[0][0] else None

    @property
    def fields(self) -> list[str]:
        return list(self._fields)

    def value(self, get: Getter) -> Any:
        """The rendered value; a lone `{field}` keeps its type. None when absent."""
        if self._single is not None:
            raw = get(self._single)
            if isinstance(raw, bool | int | float):
                return raw
            return canonical(raw)
        return self.render(get)

    def render(self, get: Getter) -> str | None:
        """The rendered text, or None when any named field is absent."""
        out = []
        for is_field, item in self._parts:
            if is_field:
                text = canonical(get(item))
                if text is None:
                    return None
                out.append(text)
            else:
                out.append(item)
        return "".join(out) if out else None

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _predicate(field: str, spec: Any) -> Callable[[Any], bool]:
    """One match value -> a test of a field value."""
    if isinstance(spec, list):
        tests = [_predicate(field, s) for s in spec]
        return lambda v: any(t(v) for t in tests)
    if isinstance(spec, dict):
        rx = re.compile(str(spec["regex"]))

        def regex_test(v: Any) -> bool:
            text = canonical(v)
            return text is not None and rx.fullmatch(text) is not None

        return regex_test
    want = canonical(spec)
    if want is None:
        return lambda v: False
    if field == "status" and _STATUS_CLASS.match(want):
        digit = int(want[0])

        def class_test(v: Any) -> bool:
            text = canonical(v)
            return text is not None and text.isdigit() and int(text) // 100 == digit

        return class_test
    if isinstance(spec, str) and _GLOB.search(spec):
        rx = re.compile(fnmatch.translate(spec))

        def glob_test(v: Any) -> bool:
            text = canonical(v)
            return text is not None and rx.match(text) is not None

        return glob_test
    return lambda v: canonical(v) == want


class Matcher:
    """All of a rule's `match` conditions (an empty match matches every record)."""

    __slots__ = ("_tests",)

    def __init__(self, match: dict[str, Any]) -> None:
        self._tests = [(field, _predicate(field, spec)) for field, spec in match.items()]

    def __call__(self, get: Getter) -> bool:
        return all(test(get(field)) for field, test in self._tests)

    @property
    def fields(self) -> tuple[str, ...]:
        """The field names the conditions read (all a match can depend on)."""
        return tuple(field for field, _test in self._tests)


@dataclass(frozen=True, slots=True)
class IdentifySpec:
    user: Template
    device: Template | None
    session: Template | None
    traits: dict[str, Template]


@dataclass(frozen=True, slots=True)
class LogoutSpec:
    session: Template | None
    device: Template | None


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule."""

    name: str
    source: str
    matcher: Matcher
    event: str | None
    properties: dict[str, Template]
    page_name: Template | None
    identify: IdentifySpec | None
    logout: LogoutSpec | None
    change: tuple[Template, Template] | None

    @property
    def slot(self) -> bytes:
        return f"rule:{self.name}".encode()


def _opt(text: str | None) -> Template | None:
    return Template(text) if text else None


def _identify(action: IdentifyAction) -> IdentifySpec:
    return IdentifySpec(
        Template(action.user),
        _opt(action.device),
        _opt(action.session),
        {k: Template(v) for k, v in action.traits.items()},
    )


def compile_rules(rules: tuple[RuleConfig, ...]) -> dict[str, list[Rule]]:
    """Rules grouped by source, in config order. `logout: true` takes the session/device
    templates of the first identify rule of its source (SPEC §3.3)."""
    first_identify: dict[str, IdentifyAction] = {}
    for cfg in rules:
        if cfg.identify is not None:
            first_identify.setdefault(cfg.source, cfg.identify)
    out: dict[str, list[Rule]] = {}
    for cfg in rules:
        logout: LogoutSpec | None = None
        if cfg.logout is True:
            ident = first_identify.get(cfg.source)
            if ident is not None:
                logout = LogoutSpec(_opt(ident.session), _opt(ident.device))
        elif isinstance(cfg.logout, LogoutAction):
            logout = LogoutSpec(_opt(cfg.logout.session), _opt(cfg.logout.device))
        change = None
        if cfg.identity_change is not None:
            change = (Template(cfg.identity_change.old), Template(cfg.identity_change.new))
        rule = Rule(
            name=cfg.name,
            source=cfg.source,
            matcher=Matcher(cfg.match),
            event=cfg.event,
            properties={k: Template(v) for k, v in cfg.properties.items()},
            page_name=_opt(cfg.page_name),
            identify=_identify(cfg.identify) if cfg.identify is not None else None,
            logout=logout,
            change=change,
        )
        out.setdefault(cfg.source, []).append(rule)
    return out


def first_identify(rules: list[Rule]) -> IdentifySpec | None:
    """The identify templates an app `event:` rule uses to find its person."""
    return next((r.identify for r in rules if r.identify is not None), None)
