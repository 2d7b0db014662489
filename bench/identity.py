"""Identity resolution against ground truth: wrong merges, attribution, throughput, memory.

    .venv/bin/python bench/identity.py [--visitors 20000] [--seed 7] [--store sqlite|redis]

Generates a corpus whose every hit's true person is known — anonymous visitors, logins by device
id or by session cookie only, km_ni cookies set after login, logouts, shared computers used by two
people without a logout, cookieless visitors — runs `trackd run --once` on it, and reports:

- wrong merges: groups of identities linked by aliases that hold the named ids of two different
  people (must be 0);
- the share of post-login hits attributed to the right person;
- hits attributed to someone other than the human who made them (the shared computer's second
  user browsing before their login, on the first user's cookie, is the known, unavoidable case);
- resolver throughput (hits/s of the whole run) and the peak RSS of the largest trackd process
  (and of all of them summed: workers and forkserver).

`--store redis` runs the same corpus with `identity.store` on a fresh `redis-server` (started on a
free loopback port in the work directory, or `--redis-url` for one you run), and adds the memory
the graph took there (`INFO memory` before and after) per 100k visitors.

Writes bench/results/identity.json (identity-redis.json with --store redis).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure

BASE = 1780308000.0  # 2026-06-01T10:00:00Z
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/{v}.0"

Truth = dict[str, tuple[str, str | None]]  # path -> (human, named id the human is logged in as)
LOGIN_REQUEST = "<login request>"


def clf(t: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(BASE + t))


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(BASE + t)) + f".{int(t % 1 * 1000):03d}Z"


def generate(work: Path, visitors: int, seed: int) -> Truth:
    rng = random.Random(seed)
    access: list[tuple[float, str]] = []
    app: list[tuple[float, str]] = []
    truth: Truth = {}
    n = 0

    def hit(t: float, human: str, as_named: str | None, ip: str, ua: str, cookie: str) -> None:
        nonlocal n
        n += 1
        path = f"/h/{n}"
        truth[path] = (human, as_named)
        access.append(
            (t, f'{ip} - - [{clf(t)}] "GET {path} HTTP/1.1" 200 512 "-" "{ua}" "{cookie}"\n')
        )

    for v in range(visitors):
        start = rng.uniform(0, 7 * 86400)
        ip = f"10.{v % 250}.{v // 250 % 250}.{v // 62500 % 250 + 1}"
        ua = UA.format(v=100 + v % 40)
        device = f"d{v:08d}AbCdEf"
        human = f"h{v}"
        t = start
        r = rng.random()
        if r < 0.05:  # cookieless: a derived id per day, never aliased
            for _ in range(rng.randint(1, 3)):
                hit(t, human, None, ip, ua, "-")
                t += rng.uniform(5, 120)
            continue
        for _ in range(rng.randint(1, 3)):  # anonymous browsing
            hit(t, human, None, ip, ua, f"km_ai={device}")
            t += rng.uniform(5, 120)
        if r > 0.15:
            continue  # most visitors never log in
        user = f"u{v}@example.com"
        session = f"s{v:08d}x"
        by_device = rng.random() < 0.4
        t += 2
        # The POST /login hit carries the new session cookie; the app logs the login within a
        # second or so either side of it. The login request itself is neither before nor after
        # the login: it is scored separately.
        hit(t, human, LOGIN_REQUEST, ip, ua, f"km_ai={device}; sid={session}")
        login_t = t + rng.uniform(-1.5, 1.5)
        entry = {"ts": iso(login_t), "event": "login", "email": user, "session_id": session}
        if by_device:
            entry["anon_id"] = device
        app.append((login_t, json.dumps(entry) + "\n"))
        km_ni = rng.random() < 0.3
        for _ in range(rng.randint(1, 6)):
            t += rng.uniform(3, 90)
            cookie = f"km_ai={device}; sid={session}"
            if km_ni:
                cookie += f"; km_ni={user.replace('@', '%40')}"
            hit(t, human, user, ip, ua, cookie)
        r2 = rng.random()
        if r2 < 0.2:  # logout, then anonymous browsing (the same human, not logged in)
            t += 5
            app.append(
                (t, json.dumps({"ts": iso(t), "event": "logout", "session_id": session}) + "\n")
            )
            for _ in range(rng.randint(1, 2)):
                t += rng.uniform(5, 60)
                hit(t, human, None, ip, ua, f"km_ai={device}")
        elif r2 < 0.3:  # a shared computer: someone else logs in without a logout
            other = f"h{v}b"
            other_user = f"u{v}b@example.com"
            t += 600
            hit(t, other, None, ip, ua, f"km_ai={device}")  # indistinguishable from the first
            t += 30
            login_t = t + 0.4
            app.append(
                (
                    login_t,
                    json.dumps(
                        {
                            "ts": iso(login_t),
                            "event": "login",
                            "email": other_user,
                            "anon_id": device,
                        }
                    )
                    + "\n",
                )
            )
            for _ in range(rng.randint(1, 3)):
                t += rng.uniform(3, 60)
                hit(t, other, other_user, ip, ua, f"km_ai={device}")
    access.sort(key=lambda e: e[0])
    app.sort(key=lambda e: e[0])
    with (work / "access.log").open("w") as fh:
        fh.writelines(line for _, line in access)
    with (work / "app.log").open("w") as fh:
        fh.writelines(line for _, line in app)
    return truth


def config(work: Path, store: str = "sqlite") -> Path:
    (work / "secret").write_text("bench-secret\n")
    cfg = {
        "state_dir": str(work / "state"),
        "start_at": "beginning",
        "identity": {
            "secret_file": str(work / "secret"),
            "session_cookies": ["sid"],
            "store": store,
        },
        "sources": [
            {
                "name": "web",
                "kind": "access",
                "paths": [str(work / "access.log")],
                "format": "combined_cookie",
            },
            {
                "name": "app",
                "kind": "app",
                "paths": [str(work / "app.log")],
                "format": "json",
                "time_field": "ts",
            },
        ],
        "events": {
            "pageviews": {"skip_bots": False},
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
                {"name": "logout", "source": "app", "match": {"event": "logout"}, "logout": True},
            ],
        },
        "sink": {"type": "file", "path": str(work / "out.jsonl")},
        "metrics": {"listen": ""},
        "log": {"level": "warning"},
    }
    path = work / "trackd.yaml"
    path.write_text(json.dumps(cfg))
    return path


def evaluate(work: Path, truth: Truth) -> dict[str, float]:
    # human -> the named id they log in as (if they ever do)
    named_of = {
        human: named
        for human, named in truth.values()
        if named is not None and named != LOGIN_REQUEST
    }
    human_of = {named: human for human, named in named_of.items()}
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    aliases = post_login = post_right = misattributed = anon = anon_named = 0
    login_requests = login_named = 0
    with (work / "out.jsonl").open("rb") as fh:
        for raw in fh:
            m = json.loads(raw)
            if m["type"] == "alias":
                aliases += 1
                parent[find(m["previousId"])] = find(m["userId"])
                continue
            if m["type"] != "page":
                continue
            human, as_named = truth[m["properties"]["path"]]
            user = m.get("userId")
            if as_named == LOGIN_REQUEST:
                login_requests += 1
                login_named += user is not None
            elif as_named is not None:
                post_login += 1
                post_right += user == as_named
            else:
                anon += 1
                anon_named += user is not None
            if user is not None and human_of.get(user) != human:
                misattributed += 1
    # A wrong merge: one alias-connected group holding the named ids of two different people.
    groups: dict[str, set[str]] = defaultdict(set)
    for node in list(parent):
        if node in human_of:
            groups[find(node)].add(human_of[node])
    wrong = sum(1 for humans in groups.values() if len(humans) > 1)
    return {
        "aliases": aliases,
        "wrong_merges": wrong,
        "post_login_hits": post_login,
        "post_login_right_share": round(post_right / post_login, 4) if post_login else 1.0,
        "anonymous_hits": anon,
        "anonymous_hits_given_a_person_share": round(anon_named / anon, 4) if anon else 0.0,
        "hits_given_someone_else": misattributed,
        "login_request_hits_named_share": round(login_named / login_requests, 4)
        if login_requests
        else 0.0,
    }


class Redis:
    """A redis-server of its own (no persistence), or the one at `url`."""

    def __init__(self, work: Path, url: str | None) -> None:
        import redis

        self.proc: subprocess.Popen[bytes] | None = None
        if url is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            server = shutil.which("redis-server") or "/usr/bin/redis-server"
            (work / "redis").mkdir(exist_ok=True)
            self.proc = subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(work / "redis")],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            url = f"redis://127.0.0.1:{port}/0"
        self.url = url
        self.client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the server is starting

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def keys(self) -> int:
        return int(self.client.dbsize())

    def close(self) -> None:
        self.client.close()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--visitors", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", help="keep the corpus and output in this directory")
    ap.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    ap.add_argument(
        "--redis-url", help="with --store redis: an existing Redis (default: start one)"
    )
    args = ap.parse_args()
    redis_info: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        truth = generate(work, args.visitors, args.seed)
        gen_s = time.perf_counter() - t0
        server = Redis(work, args.redis_url) if args.store == "redis" else None
        try:
            cfg = config(work, server.url if server is not None else "sqlite")
            mem_before = server.used_memory() if server is not None else 0
            run = measure([sys.executable, "-m", "agent", "run", "--once", "-c", str(cfg)])
            elapsed = float(run["wall_s"])
            err = str(run["stderr"])
            if server is not None:
                used = server.used_memory() - mem_before
                redis_info = {
                    "redis_keys": server.keys(),
                    "redis_used_memory_mib": round(used / 2**20, 1),
                    "redis_bytes_per_visitor": round(used / args.visitors),
                    "redis_mib_per_100k_visitors": round(used / args.visitors * 1e5 / 2**20, 1),
                }
        finally:
            if server is not None:
                server.close()
        result = evaluate(work, truth)
    hits = len(truth)
    result.update(
        {
            "visitors": args.visitors,
            "hits": hits,
            "generate_s": round(gen_s, 1),
            "run_s": round(elapsed, 2),
            "hits_per_s": round(hits / elapsed),
            "peak_rss_mib": round(float(run["peak_process_rss_mib"]), 1),
            "peak_rss_all_processes_mib": round(float(run["peak_rss_mib"]), 1),
            "cpus": os.cpu_count(),
            "store": args.store,
            **redis_info,
        }
    )
    print(f"{'measure':<40}{'value':>14}")
    for key in (
        "visitors",
        "hits",
        "aliases",
        "wrong_merges",
        "post_login_hits",
        "post_login_right_share",
        "anonymous_hits",
        "anonymous_hits_given_a_person_share",
        "hits_given_someone_else",
        "login_request_hits_named_share",
        "run_s",
        "hits_per_s",
        "peak_rss_mib",
        "peak_rss_all_processes_mib",
        *redis_info,
    ):
        print(f"{key:<40}{result[key]:>14}")
    print(f"trackd summary: {err.strip().splitlines()[-1]}")
    name = "identity.json" if args.store == "sqlite" else "identity-redis.json"
    out = Path(__file__).resolve().parent / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
