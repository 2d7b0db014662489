"""What the bench scripts share: figures of a process read from /proc, the key/value table they
print, and the results JSON they write under bench/results/."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class GroupSampler(threading.Thread):
    """Samples every process of a process group from /proc: CPU (utime + stime, the last value
    seen per process), the peak of their summed RSS and the peak RSS of the largest one.

    (`RUSAGE_CHILDREN`'s ru_maxrss would not do for the largest: a child started by vfork
    inherits the high-water mark of the parent's memory when it execs, so a bench that holds
    its corpus in memory would report that as trackd's.)"""

    def __init__(self, pgid: int) -> None:
        super().__init__(daemon=True)
        self.pgid = pgid
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0
        self.peak_process_rss = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            rss = 0
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) != self.pgid:  # fields[2] is pgrp (after state, ppid)
                    continue
                self.cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK
                one = int(fields[21]) * _PAGE
                rss += one
                self.peak_process_rss = max(self.peak_process_rss, one)
            self.peak_rss = max(self.peak_rss, rss)
            self.stop.wait(0.05)


def measure(
    cmd: list[str],
    env: dict[str, str] | None = None,
    *,
    reap: Callable[[], None] | None = None,
) -> dict[str, float | str]:
    """Run `cmd` in a process group of its own to its end: wall and CPU seconds (every process:
    trackd, its forkserver and workers), the peak RSS of all of them summed and of the largest
    one (from /proc: RUSAGE_CHILDREN's ru_maxrss is the largest child this bench ever had, and
    a vfork'd child starts from the bench's own high-water mark), stdout and stderr. `reap`
    waits for descendants orphaned to this process (a subreaper) before the CPU is read.
    Exits the bench, with trackd's stderr, when `cmd` fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    sampler = GroupSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}): {err[-2000:]}")
    if reap is not None:
        reap()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": wall,
        "cpu_s": max(waited, sum(sampler.cpu.values())),
        "peak_rss_mib": sampler.peak_rss / (1 << 20),
        "peak_process_rss_mib": sampler.peak_process_rss / (1 << 20),
        "stdout": out,
        "stderr": err,
    }


def peak_rss_mib(pid: int) -> float:
    """The peak resident set size of process `pid` (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_json(name: str, data: Any) -> Path:
    """Write `data` as bench/results/`name`.json (indented) and return its path."""
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    return out


def report(name: str, result: dict[str, float], width: int) -> None:
    """Print `result` as a key/value table (keys `width` wide), then write it as `name`.json."""
    for key, value in result.items():
        print(f"{key:<{width}}{value:>12,.2f}")
    write_json(name, result)


def write_results(bench: str, **fields: Any) -> None:
    """Write bench/results/`bench`.json: the bench's name, the Python and machine it ran on, then
    `fields`; say where."""
    data = {
        "bench": bench,
        "python": platform.python_version(),
        "machine": platform.machine(),
        **fields,
    }
    print(f"wrote {write_json(bench, data)}")


def file_sink_config(work: Path, log: Path, log_format: str, **top: Any) -> Path:
    """Write work/trackd.yaml (with its secret, work/secret): one nginx access source `web` over
    `log` in `log_format`, the file sink at work/out.jsonl, no metrics, JSON warnings only; `top`
    adds top-level keys (`start_at=...`). Its path."""
    (work / "secret").write_text("bench-secret\n")
    cfg = work / "trackd.yaml"
    settings: dict[str, Any] = {
        "state_dir": str(work / "state"),
        **top,
        "identity": {"secret_file": str(work / "secret")},
        "sources": [
            {
                "name": "web",
                "kind": "access",
                "paths": [str(log)],
                "format": "nginx",
                "log_format": log_format,
                "base_url": "https://www.example.com",
            }
        ],
        "sink": {"type": "file", "path": str(work / "out.jsonl")},
        "metrics": {"listen": ""},
        "log": {"format": "json", "level": "warning"},
    }
    cfg.write_text(json.dumps(settings))
    return cfg
