"""Tailing torture: a writer at >= 1,000 lines/s, real logrotate every few seconds (create,
compress, delaycompress), and kill -9 restarts of `trackd run` at random moments; at the end every
sequence number must be in the file sink's output exactly once.

    .venv/bin/python bench/torture.py [--seconds 60] [--rate 1500] [--kills 2] [--seed 1]

Prints `lost=0 dup=0 of N` (exit 0), or the damage (exit 1). Writes bench/results/torture.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sources.tailing import Agent, Writer, logrotate, wait_until  # noqa: E402


def torture(work: Path, seconds: float, rate: float, kills: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    log = work / "app.log"
    log.touch()
    agent = Agent(work, [str(log)], {"rotate_wait": "2s"}).start()
    writer = Writer(log, rate).start()
    started = time.monotonic()
    kill_at = sorted(rng.uniform(0.15, 0.85) * seconds for _ in range(kills))
    rotations = 0
    restarts = 0
    next_rotation = rng.uniform(2, 5)
    try:
        while (now := time.monotonic() - started) < seconds:
            if kill_at and now >= kill_at[0]:
                kill_at.pop(0)
                agent.kill()
                if rng.random() < 0.5:  # sometimes rotate while the agent is down
                    logrotate(work, log, "create", "compress", "delaycompress")
                    rotations += 1
                agent.start()
                restarts += 1
            if now >= next_rotation:
                logrotate(work, log, "create", "compress", "delaycompress")
                rotations += 1
                next_rotation = now + rng.uniform(2, 5)
            time.sleep(0.05)
        total = writer.stop()
        wait_until(lambda: agent.delivered() >= total, 120, "the agent to catch up", 0.2)
        assert agent.stop() == 0, "the final drain failed"
    finally:
        writer.stop()
        agent.close()
    counts = Counter(agent.seqs())
    lost = total - len(set(counts) & set(range(total)))
    dup = sum(n - 1 for n in counts.values() if n > 1)
    return {
        "lines": total,
        "lost": lost,
        "dup": dup,
        "rotations": rotations,
        "kill9_restarts": restarts,
        "seconds": seconds,
        "rate": rate,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=1500.0, help="lines per second")
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trackd-torture-") as tmp:
        result = torture(Path(tmp), args.seconds, args.rate, args.kills, args.seed)
    print(
        f"rotations={result['rotations']} kill9_restarts={result['kill9_restarts']} "
        f"lost={result['lost']} dup={result['dup']} of {result['lines']}"
    )
    out = ROOT / "bench" / "results" / "torture.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0 if result["lost"] == 0 and result["dup"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
