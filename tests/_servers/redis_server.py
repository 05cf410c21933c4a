"""Private ``redis-server`` processes for the tests: free loopback ports, a temp dir, no data.

Every server runs with ``--save "" --appendonly no``, so a restart loses everything (which is
what the restart tests want). When ``redis-server`` is not on PATH the tests that need one
skip with a visible reason, except under ``CI=true``, where they fail instead.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = [
    "RedisCluster3",
    "RedisServer",
    "free_port",
    "require_redis_server",
    "tls_supported",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(reason)


def require_redis_server() -> str:
    """The path of ``redis-server``, or skip (fail under CI=true) with the reason."""
    path = shutil.which("redis-server")
    if path is None:
        _missing("redis-server is not on PATH; install Redis 6.2+ to run the Redis tests")
    assert path is not None
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port P with P + 10000 (the cluster bus port) free too, as Cluster needs."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 45000)
        if _is_free(port) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def tls_supported(server: str) -> bool:
    """Whether this redis-server was built with TLS (it then accepts ``--tls-port``)."""
    # With both ports 0, a TLS build exits at once with "not to listen anywhere"; a build
    # without TLS rejects --tls-port as a bad directive.
    out = subprocess.run(
        [server, "--port", "0", "--tls-port", "0", "--save", ""],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    text = out.stdout + out.stderr
    return "not listen anywhere" in text


class RedisServer:
    """One ``redis-server`` on a free loopback port, in its own temp dir."""

    def __init__(self, *, args: Sequence[str] = (), port: int | None = None) -> None:
        self.binary = require_redis_server()
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="threadlock-redis-"))
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        self.tls = any(arg == "--tls-port" for arg in self.args)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        base = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--protected-mode",
            "no",
        ]
        if not self.tls:
            base += ["--port", str(self.port)]
        return base + self.args

    def start(self, *, wait: bool = True) -> RedisServer:
        log = (self.dir / "redis.log").open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait and not self.tls:
            self.wait_ready()
        return self

    def wait_ready(self, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            if _ping(self.port):
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not start: {self.log()}")

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the data (there is none on disk) is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Kill and start again on the same port, empty."""
        self.kill()
        for name in ("nodes.conf", "dump.rdb"):
            (self.dir / name).unlink(missing_ok=True)
        self.start()

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisCluster3:
    """Three masters (``--cluster-enabled yes``), joined by ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        require_redis_server()
        if shutil.which("redis-cli") is None:
            _missing("redis-cli is not on PATH; it is needed to create the test cluster")
        self.nodes = [
            RedisServer(
                port=cluster_port(),
                args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ],
            )
            for _ in range(3)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisCluster3:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [node.cli("cluster", "info") for node in self.nodes]
            if all("cluster_state:ok" in state for state in states):
                return self
            time.sleep(0.1)
        raise RuntimeError("the test cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
