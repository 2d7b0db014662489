"""The fault matrix: each fault run against the real product, counted by line identity.

    .venv/bin/python bench/faults.py [--quick] [--json] [--only KEY,...] [--jobs 2] [--seed 1]

Every generated access line carries a unique sequence number (`/p/<seq>`), so each message out
names its line. For each fault (bench/faults_cases.py) a row: the lines written where a reader
could find them (`lines`), the page messages delivered — into the file sink, or acknowledged by
the real loopback HTTP receiver, repeats included (`out`) — duplicates (`dup`: a second copy in
the file sink, or a line that reached an endpoint under two messageIds or encodings), losses
(`lost`), same-id re-sends an endpoint drops (`resent`: allowed only where SPEC §5.2's
at-least-once applies — after a crash or a cut-short drain), and PASS/FAIL. A row also fails on
a problem it notes (an exit code, a torn sink file, a Retry-After not held...). Exit 1 if any
row fails.

Each fault runs in its own process (a fault injected in process stays there), `--jobs` at a
time, in a temp directory kept when the row fails. `--json` prints the rows as JSON on stdout
(the table goes to stderr). `--quick` is the CI scale (about 45 s), the default about 3 min.
A failed row says how to run it alone: `bench/faults.py --only KEY --seed N`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from common import write_json  # noqa: E402 - bench/ on sys.path first
from faults_cases import CASES, ENV, Case, Ctx, Result  # noqa: E402


@dataclass
class Row:
    key: str
    fault: str
    sink: str
    lines: int = 0
    out: int = 0
    dup: int = 0
    lost: int = 0
    resent: int = 0
    resend_allowed: bool = False
    note: str = ""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return (
            self.lines > 0
            and self.dup == 0
            and self.lost == 0
            and (self.resend_allowed or self.resent == 0)
            and not self.problems
        )

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _row(case: Case, result: Result, seconds: float) -> Row:
    t = result.tally
    problems = list(result.problems)
    if t.extra:
        problems.append(f"{t.extra} messages for lines never written")
    return Row(
        case.key,
        case.name,
        case.sink,
        t.lines,
        t.out,
        t.dup,
        t.lost,
        t.resent,
        result.resend_allowed,
        result.note,
        problems,
        round(seconds, 1),
    )


def _case(key: str) -> Case:
    for case in CASES:
        if case.key == key:
            return case
    raise SystemExit(f"faults.py: no fault {key!r}; --list shows them")


def _rng(seed: int, key: str) -> random.Random:
    return random.Random(f"{seed}:{key}")


def run_row(key: str, work: Path, quick: bool, seed: int) -> Row:
    """Run one case in this process (the child side of `--row`)."""
    case = _case(key)
    os.environ.update(ENV)
    started = time.monotonic()
    result = case.run(Ctx(work, quick, _rng(seed, key)))
    return _row(case, result, time.monotonic() - started)


#: The rows' processes running now (each the leader of its own process group).
_LIVE: set[subprocess.Popen[bytes]] = set()
_LOCK = threading.Lock()


def _kill_live() -> None:
    """Kill every row still running, with the trackd processes it started (on Ctrl-C)."""
    with _LOCK:
        for proc in _LIVE:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def spawn_row(case: Case, root: Path, quick: bool, seed: int, timeout: float) -> Row:
    """Run one case in a child process of its own (its own session: on a timeout the whole
    group, trackd included, is killed); its log is `work/faults.log`."""
    work = root / case.key
    work.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--row", case.key, "--work", str(work), "--seed", str(seed)]
    if quick:
        cmd.append("--quick")
    started = time.monotonic()
    with (work / "faults.log").open("wb") as err:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, start_new_session=True, cwd=ROOT
        )
        with _LOCK:
            _LIVE.add(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            problem = f"did not finish within {timeout:.0f} s"
            return Row(case.key, case.name, case.sink, problems=[problem], seconds=timeout)
        finally:
            with _LOCK:
                _LIVE.discard(proc)
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        return Row(**{k: v for k, v in json.loads(lines[-1]).items() if k != "passed"})
    except (IndexError, ValueError, TypeError):
        tail = (work / "faults.log").read_text(errors="replace").strip().splitlines()[-1:]
        problem = f"crashed (exit {proc.returncode}): {tail[0] if tail else 'no output'}"
        return Row(
            case.key,
            case.name,
            case.sink,
            problems=[problem],
            seconds=round(time.monotonic() - started, 1),
        )


COLUMNS = ("fault", "sink", "lines", "out", "dup", "lost", "resent", "result", "s")


def table(rows: list[Row]) -> str:
    width = max(len(r.fault) for r in rows)
    head = (
        f"{'fault':<{width}}  {'sink':<11} {'lines':>7} {'out':>7} {'dup':>4} {'lost':>4} "
        f"{'resent':>6}  {'result':<6} {'s':>5}"
    )
    out = [head, "-" * len(head)]
    for r in rows:
        resent = f"{r.resent}" + ("*" if r.resend_allowed else "")
        out.append(
            f"{r.fault:<{width}}  {r.sink:<11} {r.lines:>7,} {r.out:>7,} {r.dup:>4} {r.lost:>4} "
            f"{resent:>6}  {'PASS' if r.passed else 'FAIL':<6} {r.seconds:>5.1f}"
        )
    out.append("")
    out.append("* same-id re-sends allowed (at-least-once after a crash or a cut-short drain)")
    out.append("")
    for r in rows:
        out.append(f"{r.key}: {r.note}")
        out.extend(f"    PROBLEM: {p}" for p in r.problems)
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="CI scale (about 45 s)")
    ap.add_argument("--json", action="store_true", help="rows as JSON on stdout")
    ap.add_argument("--only", default="", help="comma-separated fault keys (--list)")
    ap.add_argument("--jobs", type=int, default=2, help="faults run at once (default 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep every work directory")
    ap.add_argument("--list", action="store_true", help="list the fault keys and exit")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.list:
        for case in CASES:
            print(f"{case.key:<24} {case.sink:<12} {case.name}")
        return 0
    if args.row:
        try:
            row = run_row(args.row, Path(args.work), args.quick, args.seed)
        except Exception:  # noqa: BLE001 - the parent reports it as the row's problem
            traceback.print_exc()
            return 1
        print(json.dumps(row.as_json()))
        return 0

    cases = [_case(k.strip()) for k in args.only.split(",") if k.strip()] or CASES
    timeout = 90.0 if args.quick else 240.0
    root = Path(tempfile.mkdtemp(prefix="trackd-faults-"))
    started = time.monotonic()
    say = sys.stderr if args.json else sys.stdout
    scale = "quick" if args.quick else "full"
    print(f"fault matrix: {len(cases)} faults, {scale} scale, seed {args.seed}", file=say)
    # Ctrl-C or SIGTERM (even where a shell started this with SIGINT ignored): stop every row.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    rows = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(spawn_row, c, root, args.quick, args.seed, timeout) for c in cases]
        try:
            for future in futures:
                row = future.result()
                rows.append(row)
                verdict = "PASS" if row.passed else "FAIL"
                print(f"  {verdict}  {row.key} ({row.seconds:.1f} s)", file=say, flush=True)
        except KeyboardInterrupt:
            for future in futures:
                future.cancel()
            _kill_live()
            print(f"interrupted: the rows' work directories are under {root}", file=sys.stderr)
            return 130
    seconds = time.monotonic() - started
    failed = [r for r in rows if not r.passed]
    print("", file=say)
    print(table(rows), file=say)
    print("", file=say)
    dups, lost = sum(r.dup for r in rows), sum(r.lost for r in rows)
    summary = (
        f"{len(rows)} faults in {seconds:.0f} s: {len(rows) - len(failed)} PASS, "
        f"{len(failed)} FAIL; {sum(r.lines for r in rows):,} lines, {dups} duplicates, {lost} lost"
    )
    print(summary, file=say)
    for r in failed:
        quick = " --quick" if args.quick else ""
        print(
            f"reproduce {r.key}: .venv/bin/python bench/faults.py --only {r.key}{quick} "
            f"--seed {args.seed}   (work directory kept: {root / r.key})",
            file=say,
        )
    if not args.keep:
        for r in rows:
            if r.passed:
                shutil.rmtree(root / r.key, ignore_errors=True)
        if not failed:
            shutil.rmtree(root, ignore_errors=True)
    data = {
        "scale": scale,
        "seed": args.seed,
        "seconds": round(seconds, 1),
        "passed": not failed,
        "rows": [r.as_json() for r in rows],
    }
    if not args.only:
        write_json("faults-quick" if args.quick else "faults", data)
    if args.json:
        print(json.dumps(data, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
