"""Byte-identity of `trackd run --once` output across code changes (issue 12's hard rule).

Generates seeded corpora (the bench corpus, the issue-12 yardstick, a login-heavy one with rules,
a multi-source one: three access files + an app log with login/logout rules), runs `run --once`
into the file sink over each (fresh state, `start_at: beginning`, a fixed secret), and either keeps
the sink files (`--record DIR`) or compares them with kept ones (`--check DIR`, exit 1 on any
difference).

    .venv/bin/python bench/equivalence.py --record /tmp/perf-ref
    .venv/bin/python bench/equivalence.py --check /tmp/perf-ref [--workers 0,2]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen import NGINX_FORMAT, access_log, issue_log

SESSION_FORMAT = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_cookie" $request_time'
)

RULES: list[dict[str, Any]] = [
    {
        "name": "pricing",
        "source": "web",
        "match": {"method": "GET", "path": "/pricing", "status": "2xx"},
        "event": "Viewed Pricing",
        "properties": {"plan": "{query.plan}"},
    },
    {
        "name": "signup",
        "source": "web",
        "match": {"method": "POST", "path": "/account"},
        "event": "Signed Up",
        "properties": {"agent": "{user_agent}"},
    },
    {
        "name": "search",
        "source": "web",
        "match": {"path": "/search"},
        "event": "Searched",
        "properties": {"q": "{query.q}"},
    },
]

APP_RULES: list[dict[str, Any]] = [
    {
        "name": "login",
        "source": "app",
        "match": {"event": "login"},
        "identify": {
            "user": "{email}",
            "session": "{session_id}",
            "traits": {"email": "{email}", "user_id": "{user_id}"},
        },
    },
    {"name": "logout", "source": "app", "match": {"event": "logout"}, "logout": True},
    {
        "name": "purchase",
        "source": "app",
        "match": {"event": "purchase"},
        "event": "Purchased",
        "properties": {"amount": "{amount}"},
    },
]


def _source(name: str, paths: list[str], log_format: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "access",
        "paths": paths,
        "format": "nginx",
        "log_format": log_format,
        "base_url": "https://www.example.com",
    }


def multi_source(work: Path, lines: int) -> dict[str, Any]:
    """Three access files with a session cookie, and an app log of logins/logouts/purchases."""
    rng = random.Random(7)
    files = [work / f"access-{i}.log" for i in range(3)]
    handles = [f.open("w") for f in files]
    app = (work / "app.log").open("w")
    for i in range(lines):
        v = rng.randrange(3000)
        sec = i // 40
        ts = f"28/Nov/2026:{sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d} +0000"
        cookie = f"km_ai=d{v:06d}Xy; sessionid=s{v:x}" if rng.random() < 0.8 else "-"
        path = rng.choice(["/", "/pricing?plan=pro", "/docs", "/search?q=a+b", "/x.css"])
        method = "POST" if rng.random() < 0.05 else "GET"
        handles[v % 3].write(
            f'10.1.{v % 250}.{v % 9} - - [{ts}] "{method} {path} HTTP/1.1" 200 {100 + v} '
            f'"-" "Mozilla/5.0 Firefox/{v % 5}" "{cookie}" 0.012\n'
        )
        if rng.random() < 0.08:
            event = rng.choice(["login", "login", "logout", "purchase"])
            stamp = f"2026-11-28T{sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}Z"
            app.write(
                json.dumps(
                    {
                        "ts": stamp,
                        "event": event,
                        "email": f"User{v % 900}@Example.com",
                        "user_id": str(v % 900),
                        "session_id": f"s{v:x}",
                        "amount": str(v % 97),
                    }
                )
                + "\n"
            )
    for h in (*handles, app):
        h.close()
    web = _source("web", [str(work / "access-*.log")], SESSION_FORMAT)
    app_src = {
        "name": "app",
        "kind": "app",
        "paths": [str(work / "app.log")],
        "format": "json",
        "time_field": "ts",
    }
    return {
        "sources": [web, app_src],
        "identity": {"session_cookies": ["sessionid"]},
        "events": {"rules": RULES + APP_RULES},
    }


def corpora(work: Path, scale: float) -> dict[str, dict[str, Any]]:
    """name -> the config keys (sources, identity, events) of each corpus, written under work."""
    n = max(1000, int(scale))
    bench = access_log(work / "bench.log", n)
    issue = issue_log(work / "issue.log", n)
    logins = issue_log(work / "logins.log", n // 2, visitors=5000, seed=5, login_share=0.6)
    mdir = work / "multi"
    mdir.mkdir(exist_ok=True)
    return {
        "bench": {"sources": [_source("web", [str(bench)], NGINX_FORMAT)]},
        "issue": {"sources": [_source("web", [str(issue)], NGINX_FORMAT)]},
        "logins": {
            "sources": [_source("web", [str(logins)], NGINX_FORMAT)],
            "events": {"rules": RULES},
        },
        "multi": multi_source(mdir, n // 3),
    }


def run(work: Path, keys: dict[str, Any], workers: str | None) -> tuple[Path, float]:
    """`run --once` with `keys` into work/out.jsonl; the sink file and the seconds it took."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / "secret").write_text("bench-secret\n")
    settings = {
        "state_dir": str(work / "state"),
        "start_at": "beginning",
        **keys,
        "identity": {"secret_file": str(work / "secret"), **keys.get("identity", {})},
        "sink": {"type": "file", "path": str(work / "out.jsonl")},
        "metrics": {"listen": ""},
        "log": {"format": "json", "level": "warning"},
    }
    cfg = work / "trackd.json"
    cfg.write_text(json.dumps(settings))
    env = dict(os.environ)
    if workers is not None:
        env["TRACKD_WORKERS"] = workers
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "agent", "run", "--once", "-c", str(cfg)],
        check=True,
        capture_output=True,
        env=env,
    )
    return work / "out.jsonl", time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, help="keep the sink files in this directory")
    mode.add_argument("--check", type=Path, help="compare the sink files with this directory's")
    ap.add_argument("--lines", type=int, default=200_000, help="lines of each corpus")
    ap.add_argument("--workers", default="", help="TRACKD_WORKERS values to check, e.g. 0,2")
    ap.add_argument("--only", default="", help="comma-separated corpus names")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "trackd-equivalence",
        help="where corpora and runs go (a fixed path: messages name their file)",
    )
    args = ap.parse_args()
    workers: list[str | None] = [w for w in args.workers.split(",") if w] or [None]
    failed = 0
    base = args.work
    base.mkdir(parents=True, exist_ok=True)
    wanted = {n for n in args.only.split(",") if n}
    for name, keys in corpora(base, args.lines).items():
        if wanted and name not in wanted:
            continue
        for w in workers:
            out, took = run(base / f"run-{name}", keys, w)
            label = f"{name} (TRACKD_WORKERS={w if w is not None else 'auto'})"
            if args.record is not None:
                args.record.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out, args.record / f"{name}.jsonl")
                size = out.stat().st_size
                print(f"recorded {label}: {size:,} bytes in {took:.1f}s")
                continue
            ref = args.check / f"{name}.jsonl"
            same = filecmp.cmp(out, ref, shallow=False)
            failed += not same
            print(f"{'same' if same else 'DIFFERENT'} {label} ({took:.1f}s)")
            if not same:
                shutil.copyfile(out, args.check / f"{name}.new.jsonl")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
