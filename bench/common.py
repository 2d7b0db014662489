"""What the bench scripts share: figures of a process read from /proc, the key/value table they
print, and the results JSON they write under bench/results/."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


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
