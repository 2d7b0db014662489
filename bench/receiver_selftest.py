"""Self-test of the benchmark receiver: nginx must not be the bottleneck of a delivery benchmark.

    .venv/bin/python bench/receiver_selftest.py [--requests 2000] [--status 204]

Starts `NginxReceiver` and, over one kept-alive connection each (after a short warm-up), times
`--requests` GETs with httpx, as many gzip POSTs (64 KiB of hex, gzipped) with httpx, and as many
GETs from a bare socket (the floor: what nginx answers when the client costs next to nothing).
The httpx rows are the ceiling of one sync Python client; the socket row shows nginx is well above
it. Prints a table.
"""

from __future__ import annotations

import argparse
import gzip
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from receiver import NginxReceiver


def timed(n: int, send: Callable[[], None]) -> float:
    """Requests/s for `n` calls of `send()`."""
    start = time.perf_counter()
    for _ in range(n):
        send()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--status", type=int, default=204)
    args = ap.parse_args()
    body = gzip.compress(os.urandom(32 * 1024).hex().encode())
    with NginxReceiver(status=args.status) as rx, httpx.Client(trust_env=False) as c:
        url = f"{rx.url}/v1/batch"

        def get() -> None:
            assert c.get(url).status_code == args.status

        def post() -> None:
            r = c.post(url, content=body, headers={"Content-Encoding": "gzip"})
            assert r.status_code == args.status

        for _ in range(50):
            get()
        get_rate = timed(args.requests, get)
        post_rate = timed(args.requests, post)
        with socket.create_connection(("127.0.0.1", rx.port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw_request = b"GET /v1/batch HTTP/1.1\r\nHost: bench\r\n\r\n"
            status_line = f"HTTP/1.1 {args.status} ".encode()

            def raw() -> None:
                sock.sendall(raw_request)
                got = b""
                while b"\r\n\r\n" not in got:  # 204: no body
                    chunk = sock.recv(65536)
                    assert chunk, "nginx closed the connection"
                    got += chunk
                assert got.startswith(status_line), got

            raw_rate = timed(args.requests, raw) if args.status == 204 else float("nan")
    print(f"{'request':<24} {'count':>6} {'req/s':>9}")
    print(f"{'GET (keep-alive)':<24} {args.requests:>6} {get_rate:>9.0f}")
    print(
        f"{'POST gzip ' + str(len(body) // 1024) + ' KiB':<24} {args.requests:>6} {post_rate:>9.0f}"
    )
    print(f"{'GET (bare socket)':<24} {args.requests:>6} {raw_rate:>9.0f}")


if __name__ == "__main__":
    main()
