"""A throwaway PostgreSQL cluster for tests and benchmarks.

``initdb`` into a temporary directory, ``pg_ctl`` on a free loopback port, the unix socket in
the same directory. Postgres refuses to run as root, so when we are root the binaries run as
the ``postgres`` user (or ``nobody``) and the directory is handed to that user.

    server = PostgresServer.create()      # raises ServerUnavailable if binaries are missing
    server.start(); server.dsn; server.restart(); server.stop(); server.destroy()
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresServer", "ServerUnavailable", "find_bindir"]


class ServerUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed here."""


def _version_key(path: str) -> tuple[int, ...]:
    parts = Path(path).parent.name.split(".")
    return tuple(int(p) for p in parts if p.isdigit())


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's layout."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServerUnavailable("running as root and there is no 'postgres' or 'nobody' user")


class PostgresServer:
    """One throwaway cluster. Not thread-safe; meant for one test session."""

    def __init__(self, bindir: Path, base: Path, settings: dict[str, str] | None = None) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.sockdir = base / "sock"
        self.logfile = base / "postgres.log"
        self.port = _free_port()
        self.user = "postgres"
        self._runas = _run_as()
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "max_connections": "200",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            **(settings or {}),
        }

    @classmethod
    def create(cls, settings: dict[str, str] | None = None) -> PostgresServer:
        bindir = find_bindir()
        if bindir is None:
            raise ServerUnavailable(
                "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                "/usr/lib/postgresql/*/bin"
            )
        base = Path(tempfile.mkdtemp(prefix="threadlock-pg-"))
        server = cls(bindir, base, settings)
        server.sockdir.mkdir()
        if server._runas is not None:
            for path in (base, server.sockdir):
                os.chown(path, server._runas.pw_uid, server._runas.pw_gid)
        server._initdb()
        return server

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str, check: bool = True, timeout: float = 60.0) -> str:
        kwargs: dict[str, object] = {}
        if self._runas is not None:
            kwargs.update(user=self._runas.pw_uid, group=self._runas.pw_gid, extra_groups=[])
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        proc = subprocess.run(  # type: ignore[call-overload]
            list(args),
            capture_output=True,
            text=True,
            env=env,
            cwd=self.base,
            timeout=timeout,
            check=False,
            **kwargs,
        )
        if check and proc.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                f"--- server log ---\n{log[-4000:]}"
            )
        return str(proc.stdout)

    def _initdb(self) -> None:
        self._cmd(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            self.user,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def _options(self) -> str:
        opts = [f"-p {self.port}", f"-k {self.sockdir}"]
        opts += [f"-c {name}={value}" for name, value in self.settings.items()]
        return " ".join(opts)

    def start(self) -> None:
        for attempt in range(5):
            try:
                self._cmd(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.logfile),
                    "-o",
                    self._options(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                )
                return
            except RuntimeError:
                if attempt == 4:
                    raise
                self.port = _free_port()  # somebody took the port: try another
                time.sleep(0.2)

    def stop(self, mode: str = "fast") -> None:
        self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m <mode>``; the port stays the same."""
        self._cmd(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-m",
            mode,
            "-o",
            self._options(),
            "-w",
            "-t",
            "60",
            "restart",
        )

    def running(self) -> bool:
        out = subprocess.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.returncode == 0

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
