"""Helpers the sink tests share: a test certificate, tiny asyncio servers on 127.0.0.1, the
sink configs the tests build, and the file sink opened and fed as the pipeline does."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import sqlite3
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.config.schema import KissmetricsSinkConfig, SegmentSinkConfig
from agent.sinks.file import FileSink
from agent.state import sinkfile
from agent.state.db import transaction

# --- a certificate made at test time ------------------------------------------------------------


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _make_cert_openssl(cert: Path, key: Path) -> None:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _make_cert_cryptography(cert: Path, key: Path) -> None:  # pragma: no cover - not installed here
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_self_signed(directory: Path) -> CertPair:
    """A self-signed certificate for 127.0.0.1 and localhost in `directory`, made with openssl
    (else `cryptography`); skips the test when neither is there."""
    pair = CertPair(directory / "cert.pem", directory / "key.pem")
    if shutil.which("openssl"):
        _make_cert_openssl(pair.cert, pair.key)
    elif importlib.util.find_spec("cryptography") is not None:
        _make_cert_cryptography(pair.cert, pair.key)
    else:
        pytest.skip("needs the openssl command or the cryptography package to make a certificate")
    return pair


def server_context(pair: CertPair) -> ssl.SSLContext:
    """A server-side TLS context presenting `pair`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pair.cert, pair.key)
    return context


# --- tiny servers on 127.0.0.1 ------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Seen:
    """One request a test server received."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    port: int
    seen: list[Seen] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[Server]:
    """Run `handler` for each connection on a free loopback port; close everything on exit."""
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            tasks.discard(task)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield Server(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


# --- sink configs -------------------------------------------------------------------------------


def segment_config(**fields: Any) -> SegmentSinkConfig:
    """A `type: segment` sink config of `fields`, validated as the config loader does."""
    return SegmentSinkConfig.model_validate({"type": "segment", **fields})


def kissmetrics_config(**fields: Any) -> KissmetricsSinkConfig:
    """A `type: kissmetrics` sink config of `fields`, validated as the config loader does."""
    return KissmetricsSinkConfig.model_validate({"type": "kissmetrics", **fields})


# --- the file sink, opened and fed as the pipeline does ------------------------------------------


def opened(conn: sqlite3.Connection, path: Path) -> FileSink:
    """Open the sink as the pipeline does: against the recorded length, saving the new one."""
    sink = FileSink(str(path))
    with transaction(conn):
        record = sink.open(sinkfile.load(conn, str(path)))
        assert record is not None
        sinkfile.save(conn, record)
    return sink


def deliver(conn: sqlite3.Connection, sink: FileSink, *bodies: bytes) -> None:
    """One chunk: write (which takes its own bytes back when it fails), then commit the new
    length; a failed transaction aborts the written chunk."""
    sink.write(list(bodies))
    try:
        with transaction(conn):
            record = sink.pending_record()
            assert record is not None
            sinkfile.save(conn, record)
    except BaseException:
        sink.abort()
        raise
    sink.committed()
