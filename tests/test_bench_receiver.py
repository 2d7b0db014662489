"""The delivery benchmarks' receiver (bench/receiver.py) is a real nginx answering 204 to GETs
and to POSTs with (gzip) bodies, over kept-alive connections."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest

from bench.receiver import NGINX, NginxReceiver

pytestmark = [
    pytest.mark.timeout(20),
    pytest.mark.skipif(
        NGINX is None,
        reason="nginx is not installed (CI installs it in .ci/run: apt-get install nginx)",
    ),
]


class TestNginxReceiver:
    def test_get_and_gzip_post_get_204(self) -> None:
        """A GET and a gzip JSON POST both get 204 on one kept-alive connection."""
        body = gzip.compress(json.dumps({"batch": [{"messageId": "m1"}] * 500}).encode())
        with NginxReceiver() as rx, httpx.Client(timeout=5, trust_env=False) as c:
            assert c.get(f"{rx.url}/").status_code == 204
            r = c.post(
                f"{rx.url}/v1/batch",
                content=body,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
            assert r.status_code == 204
            assert c.get(f"{rx.url}/after").status_code == 204  # the body was read past

    def test_other_status(self) -> None:
        """`status=` sets the answer to every request."""
        with NginxReceiver(status=503) as rx, httpx.Client(timeout=5, trust_env=False) as c:
            assert c.post(f"{rx.url}/v1/batch", content=b"x" * 100_000).status_code == 503

    def test_stop_removes_the_prefix_and_frees_the_port(self) -> None:
        """On exit nginx is gone: its port refuses connections and its temp prefix is removed."""
        with NginxReceiver() as rx:
            prefix, url = rx.prefix, rx.url
            assert (prefix / "nginx.pid").exists()
        assert not prefix.exists()
        with httpx.Client(timeout=2, trust_env=False) as c, pytest.raises(httpx.ConnectError):
            c.get(url)
