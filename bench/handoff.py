"""A backfill handed to the running daemon (SPEC §6) while live lines keep coming: the job's
lines/s, and the latency of the live lines (written -> in the file sink) during the job.

    .venv/bin/python bench/handoff.py [--lines 300000] [--live-rate 1000]

A real `trackd run` (file sink) tails `access.log`; `trackd backfill` hands it a gzipped history
of `--lines` lines (bench/gen.py's mix); a writer appends `--live-rate` lines/s to the live file
meanwhile, each with a unique path, and a reader timestamps when each shows up in the sink.
Prints a table and writes bench/results/handoff.json.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import file_sink_config, write_results
from gen import NGINX_FORMAT, access_log

LIVE = (
    '10.9.9.9 - - [{ts}] "GET /live/{n} HTTP/1.1" 200 512 "https://www.example.com/" '
    '"Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0" '
    '"km_ai=vlive0000AbCdEfGh" 0.012\n'
)


def trackd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def wait_ready(sock: socket.socket, timeout: float) -> None:
    sock.settimeout(timeout)
    while b"READY=1" not in sock.recv(4096):
        pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--live-rate", type=int, default=1000, help="live lines per second")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trackd-handoff-"))
    try:
        logs = work / "logs"
        logs.mkdir()
        plain = access_log(logs / "history.log", args.lines)
        with plain.open("rb") as src, gzip.open(logs / "access.log.1.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        plain.unlink()
        live = logs / "access.log"
        live.write_bytes(b"")
        cfg = file_sink_config(work, live, NGINX_FORMAT, start_at="beginning")
        out = work / "out.jsonl"

        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(work / "notify.sock"))
        daemon = subprocess.Popen(
            trackd("run", "-c", str(cfg)),
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": str(work / "notify.sock")},
        )
        wait_ready(notify, 30)

        written: dict[int, float] = {}
        seen: dict[int, float] = {}
        stop = threading.Event()

        def write_live() -> None:
            n = 0
            with live.open("a") as fh:
                while not stop.is_set():
                    ts = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
                    fh.write(LIVE.format(ts=ts, n=n))
                    fh.flush()
                    written[n] = time.monotonic()
                    n += 1
                    time.sleep(1 / args.live_rate)

        def read_sink() -> None:
            pos, rest = 0, b""
            while not stop.is_set() or len(seen) < len(written):
                if out.exists():
                    with out.open("rb") as fh:
                        fh.seek(pos)
                        data = fh.read()
                    pos += len(data)
                    now = time.monotonic()
                    lines = (rest + data).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        i = line.find(b'"/live/')
                        if i >= 0:
                            seen[int(line[i + 7 : line.index(b'"', i + 7)])] = now
                if stop.is_set() and time.monotonic() > deadline:
                    break
                time.sleep(0.005)

        deadline = float("inf")
        writer = threading.Thread(target=write_live)
        reader = threading.Thread(target=read_sink)
        writer.start()
        reader.start()
        time.sleep(1.0)
        started = time.monotonic()
        job = subprocess.run(
            trackd("backfill", "-c", str(cfg), str(logs / "access.log.1.gz")),
            capture_output=True,
            text=True,
            check=False,
        )
        job_s = time.monotonic() - started
        stop.set()
        writer.join()
        deadline = time.monotonic() + 10
        reader.join()
        daemon.terminate()
        daemon.wait(60)
        during = [
            seen[n] - t for n, t in written.items() if n in seen and started <= t <= started + job_s
        ]
        result = {
            "history_lines": args.lines,
            "job_seconds": round(job_s, 2),
            "job_lines_per_s": round(args.lines / job_s),
            "live_lines_during_job": len(during),
            "live_lost": len(written) - len(seen),
            "live_latency_p50_ms": round(percentile(during, 0.5) * 1000, 1) if during else None,
            "live_latency_p99_ms": round(percentile(during, 0.99) * 1000, 1) if during else None,
            "live_latency_max_ms": round(max(during) * 1000, 1) if during else None,
        }
        print(job.stderr.strip().splitlines()[-1] if job.stderr.strip() else "(no summary)")
        for key, value in result.items():
            print(f"{key:<24}{value!s:>12}")
        if job.returncode != 0:
            raise SystemExit(f"backfill exited {job.returncode}: {job.stderr[-2000:]}")
        write_results("handoff", **result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
