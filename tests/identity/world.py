"""A small world of visitors for identity tests: access hits and app events written as log files,
a config with login/logout/identity-change rules, and `trackd run --once` to resolve them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import TEST_SECRET, read_messages, run_trackd

#: 2026-06-01T10:00:00Z (in the past, so days later are still not "future"): `t` arguments are
#: seconds after it.
BASE = 1780308000.0
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"


def clf_time(t: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(BASE + t))


class World:
    """Build the logs of a scenario; `run()` resolves them and returns the messages."""

    def __init__(self, tmp: Path, **identity: Any) -> None:
        self.tmp = tmp
        self.access: list[str] = []
        self.app: list[str] = []
        self.identity = identity
        self.hits = 0

    def hit(
        self,
        t: float,
        *,
        device: str | None = None,
        named: str | None = None,
        session: str | None = None,
        ip: str = "203.0.113.9",
        ua: str = UA,
        path: str | None = None,
        raw_cookie: str | None = None,
    ) -> str:
        """An access hit at `t` (whole seconds); returns its path (`/h/<n>` unless given)."""
        self.hits += 1
        path = path or f"/h/{self.hits}"
        parts = []
        if device is not None:
            parts.append(f"km_ai={device}")
        if named is not None:
            parts.append(f"km_ni={named}")
        if session is not None:
            parts.append(f"sid={session}")
        cookie = raw_cookie if raw_cookie is not None else ("; ".join(parts) or "-")
        self.access.append(
            f'{ip} - - [{clf_time(t)}] "GET {path} HTTP/1.1" 200 100 "-" "{ua}" "{cookie}"\n'
        )
        return path

    def _app(self, t: float, **fields: Any) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(BASE + t))
        frac = f"{round((t % 1) * 1000):03d}"
        self.app.append(json.dumps({"ts": f"{stamp}.{frac}Z", **fields}) + "\n")

    def login(
        self, t: float, user: str, *, device: str | None = None, session: str | None = None
    ) -> None:
        self._app(t, event="login", email=user, anon_id=device, session_id=session)

    def logout(self, t: float, *, session: str | None = None, device: str | None = None) -> None:
        self._app(t, event="logout", session_id=session, anon_id=device)

    def change(self, t: float, old: str, new: str) -> None:
        self._app(t, event="email_changed", old_email=old, new_email=new)

    def config(self) -> Path:
        (self.tmp / "secret").write_text(TEST_SECRET + "\n")
        identity = {"secret_file": str(self.tmp / "secret"), "session_cookies": ["sid"]}
        identity.update(self.identity)
        cfg = {
            "state_dir": str(self.tmp / "state"),
            "start_at": "beginning",
            "identity": identity,
            "sources": [
                {
                    "name": "web",
                    "kind": "access",
                    "paths": [str(self.tmp / "access.log")],
                    "format": "combined_cookie",
                    "base_url": "https://shop.example.com",
                },
                {
                    "name": "app",
                    "kind": "app",
                    "paths": [str(self.tmp / "app.log")],
                    "format": "json",
                    "time_field": "ts",
                },
            ],
            "events": {
                "rules": [
                    {
                        "name": "login",
                        "source": "app",
                        "match": {"event": "login"},
                        "identify": {
                            "user": "{email}",
                            "device": "{anon_id}",
                            "session": "{session_id}",
                        },
                    },
                    {
                        "name": "logout",
                        "source": "app",
                        "match": {"event": "logout"},
                        "logout": {"session": "{session_id}", "device": "{anon_id}"},
                    },
                    {
                        "name": "email",
                        "source": "app",
                        "match": {"event": "email_changed"},
                        "identity_change": {"old": "{old_email}", "new": "{new_email}"},
                    },
                ]
            },
            "sink": {"type": "file", "path": str(self.tmp / "out.jsonl")},
            "metrics": {"listen": ""},
            "log": {"format": "json"},
        }
        path = self.tmp / "trackd.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def write(self) -> Path:
        """Write the logs (access lines in time order, as a server writes them) and the config."""
        with (self.tmp / "access.log").open("a") as fh:
            fh.writelines(sorted(self.access, key=lambda line: line.split("[", 1)[1][:20]))
        with (self.tmp / "app.log").open("a") as fh:
            fh.writelines(self.app)
        self.access, self.app = [], []
        return self.config()

    def run(self, *, in_process: bool = False) -> tuple[list[dict[str, Any]], str]:
        """Write, run `trackd run --once`, return (all messages so far, stderr). `in_process`:
        the product's own `run --once` path in this process (no interpreter start-up; stderr
        is then not captured and "" is returned)."""
        cfg = self.write()
        if in_process:
            import asyncio

            from agent.config import load_config
            from agent.pipeline.once import run_once_config

            code = asyncio.run(run_once_config(load_config(str(cfg)), 60.0))
            assert code == 0
            return read_messages(self.tmp / "out.jsonl"), ""
        proc = run_trackd("run", "--once", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        return read_messages(self.tmp / "out.jsonl"), proc.stderr


def log_events(stderr: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of `event` in a run's stderr."""
    return [
        json.loads(line)
        for line in stderr.splitlines()
        if line.startswith("{") and f'"event":"{event}"' in line
    ]


def pages(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Page messages by path."""
    return {m["properties"]["path"]: m for m in messages if m["type"] == "page"}


def aliases(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["previousId"], m["userId"]) for m in messages if m["type"] == "alias"]
