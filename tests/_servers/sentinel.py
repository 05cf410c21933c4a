"""A Redis Sentinel set on loopback: a master, one replica and three sentinels, on free ports.

Every process runs in a temp dir of its own (``redis-server --sentinel`` rewrites its config
file). Replication is Redis's own, asynchronous. :meth:`failover` SIGKILLs the current
master, waits until the sentinels name another one, and starts the killed server again as a
replica of the new master, so the set can fail over again.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests._servers.redis_server import RedisServer, free_port, require_redis_server

SERVICE = "threadlock"


def _sentinel_cmd(port: int, *args: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        sock.sendall(payload.encode())
        sock.settimeout(1.0)
        return sock.recv(65536).decode(errors="replace")


class SentinelSet:
    """Master + replica + 3 sentinels (quorum 2, down-after ``down_after_ms``)."""

    def __init__(self, *, down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.binary = require_redis_server()
        self.servers = [RedisServer(), RedisServer()]
        self.servers[1].args = ["--replicaof", "127.0.0.1", str(self.servers[0].port)]
        self.dir = Path(tempfile.mkdtemp(prefix="threadlock-sentinel-"))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelSet:
        for server in self.servers:
            server.start()
        master = self.servers[0].port
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            log = (self.dir / f"sentinel-{port}.log").open("ab")
            self.sentinels.append(
                subprocess.Popen(
                    [self.binary, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
                )
            )
            log.close()
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            try:
                ready = all(
                    str(master) in _sentinel_cmd(p, "SENTINEL", "get-master-addr-by-name", SERVICE)
                    for p in self.sentinel_ports
                )
            except OSError:
                ready = False
            if ready and self._replica_linked():
                return self
            time.sleep(0.1)
        raise RuntimeError("the sentinel set did not come up")

    def _replica_linked(self) -> bool:
        try:
            return "master_link_status:up" in self.servers[1].cli("INFO", "replication")
        except subprocess.SubprocessError:
            return False

    def master_port(self) -> int:
        reply = _sentinel_cmd(
            self.sentinel_ports[0], "SENTINEL", "get-master-addr-by-name", SERVICE
        )
        lines = reply.split("\r\n")
        return int(lines[4])  # *2 / $9 / 127.0.0.1 / $5 / port

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def failover(self, limit: float = 30.0) -> float:
        """SIGKILL the master; wait for a new one; restart the old as its replica. -> seconds."""
        old = self.master()
        began = time.monotonic()
        old.kill()
        deadline = began + limit
        new_port = old.port
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, IndexError):
                new_port = self.master_port()
            if new_port != old.port:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("no failover within the limit")
        took = time.monotonic() - began
        (old.dir / "dump.rdb").unlink(missing_ok=True)
        old.args = ["--replicaof", "127.0.0.1", str(new_port)]
        old.start()
        return took

    def pids(self) -> list[int]:
        return [s.process.pid for s in self.servers if s.process is not None]

    def save_logs(self, into: Path) -> None:
        """Copy every sentinel's and server's log (and the sentinels' rewritten configs) into
        ``into``: the sentinels log each ``+sdown``, ``+odown``, ``+switch-master`` and
        ``+convert-to-slave``, so a failover the sentinels made on their own shows there."""
        into.mkdir(parents=True, exist_ok=True)
        for path in self.dir.glob("sentinel-*"):
            shutil.copy(path, into / path.name)
        for server in self.servers:
            log = server.dir / "redis.log"
            if log.exists():
                shutil.copy(log, into / f"redis-{server.port}.log")

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
