"""Configuration: YAML in, a validated frozen `Config` out (SPEC §9)."""

from __future__ import annotations

from agent.config.load import DEFAULT_CONFIG, config_path_from, load_config, load_config_text
from agent.config.schema import Config, FileSinkConfig, SourceConfig

__all__ = [
    "DEFAULT_CONFIG",
    "Config",
    "FileSinkConfig",
    "SourceConfig",
    "config_path_from",
    "load_config",
    "load_config_text",
]
