"""``rediss://`` against a redis-server with a self-signed certificate.

It skips (with the reason) when this redis-server was built without TLS or no ``openssl``
CLI is there to make the certificate; under ``CI=true`` it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import redis
import threadlock
from _servers.redis_server import RedisServer, free_port, require_redis_server, tls_supported
from threadlock.backends.redis import RedisThreadLock
from threadlock.errors import ThreadBusy

# One worker makes the certificate and starts the TLS server (module scope) for all of it.
pytestmark = pytest.mark.xdist_group("redis-tls")


def _skip(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Path]]:
    binary = require_redis_server()
    if not tls_supported(binary):
        _skip("this redis-server was built without TLS support (--tls-port is rejected)")
    if shutil.which("openssl") is None:
        _skip("the openssl CLI is not on PATH, so no self-signed certificate can be made")
    certs = tmp_path_factory.mktemp("tls")
    cert, key = certs / "cert.pem", certs / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        check=True,
        timeout=60,
    )  # fmt: skip
    port = free_port()
    server = RedisServer(
        port=port,
        args=["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
              "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
              "--tls-auth-clients", "no"],
    )  # fmt: skip
    server.start(wait=False)
    probe = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert))
    deadline = time.monotonic() + 10
    while True:
        try:
            probe.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.05)
    probe.close()
    try:
        yield server, cert
    finally:
        server.stop()


@pytest.mark.anyio
async def test_rediss_url_with_a_self_signed_certificate(
    tls_server: tuple[RedisServer, Path],
) -> None:
    server, cert = tls_server
    url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={cert}"
    lock = threadlock.from_url(url, prefix=f"tl-tls-{uuid.uuid4().hex[:8]}")
    assert isinstance(lock, RedisThreadLock)
    async with lock:
        holder = await lock.acquire("tls", ttl=30.0)
        with pytest.raises(ThreadBusy):
            await lock.acquire("tls", ttl=30.0, timeout=0)
        got = []

        async def waiter() -> None:
            got.append(await lock.acquire("tls", ttl=30.0, timeout=None))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            with anyio.fail_after(10):
                while (info := await lock.inspect("tls")) is None or info.waiters < 1:
                    await anyio.sleep(0.01)
            assert await lock.release(holder)
            with anyio.fail_after(5):  # woken over the TLS pub/sub connection
                while not got:
                    await anyio.sleep(0.005)
        assert await lock.release(got[0])
