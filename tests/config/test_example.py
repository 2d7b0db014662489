"""The shipped example config documents every key the schema has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_config_text
from agent.config.schema import Config
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _keys(model: Any, prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        out.add(prefix + name)
        ann = field.annotation
        if hasattr(ann, "model_fields"):
            out |= _keys(ann, f"{prefix}{name}.")
    return out


def _yaml_keys(data: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(data, dict):
        for k, v in data.items():
            out.add(prefix + k)
            out |= _yaml_keys(v, f"{prefix}{k}.")
    elif isinstance(data, list):
        for item in data:
            out |= _yaml_keys(item, prefix)
    return out


def test_example_mentions_every_schema_key() -> None:
    """Every key of the schema appears in config/trackd.example.yaml (as a key or a comment)."""
    text = (ROOT / "config" / "trackd.example.yaml").read_text()
    present = _yaml_keys(yaml.safe_load(text))
    missing = [
        k for k in sorted(_keys(Config)) if k not in present and k.rsplit(".", 1)[-1] not in text
    ]
    assert missing == []


def test_example_is_structurally_valid(tmp_path: Path) -> None:
    """The example passes validation except for features this build does not have yet (its API
    key comes from the systemd credential the unit loads)."""
    text = (ROOT / "config" / "trackd.example.yaml").read_text()
    (tmp_path / "api_key").write_text("k\n")
    try:
        load_config_text(text, "/etc/trackd/trackd.yaml", {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    except ConfigError as exc:
        others = [i for i in exc.issues if "not supported yet" not in i.message]
        if others:
            pytest.fail("\n".join(str(i) for i in others))
