"""A team's MLflow tracking server: PostgreSQL backend store, proxied artifacts, 127.0.0.1.

`make tracking-server` (or `python -m pipelines tracking-server [--dir D] [--port 5000]`)
starts, from the OS packages (`apt-get install -y postgresql`):

1. PostgreSQL: `initdb` of `<dir>/pgdata` on first use (as the `postgres` user
   when run as root: PostgreSQL refuses root), `pg_ctl start` on 127.0.0.1 only,
   database `mlflow` owned by role `kdl` (trust authentication: loopback only);
2. `mlflow server --backend-store-uri postgresql://kdl@127.0.0.1:<pg port>/mlflow
   --artifacts-destination <dir>/artifacts`: clients upload and download
   artifacts through the server (`mlflow-artifacts:`), they never see its disk.

Point kdl at it with `MLFLOW_TRACKING_URI=http://127.0.0.1:5000` (or
`tracking.uri`). Ctrl-C (or SIGTERM) stops both. `TeamServer` does the same from
Python (the tests use it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

INSTALL = "apt-get install -y postgresql"


def server_env() -> dict[str, str]:
    """The environment of an `mlflow server` kdl starts: MLflow's job runner off, unless the
    environment turns it on. The runner (MLflow >= 3.5: GenAI scorers, prompt optimization;
    nothing kdl logs uses it) is 8 more processes: measured here, a server answered /health
    after 19 s on 26-32 CPU s with it, 13 s on 11-12 CPU s without (docs/scale.md)."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


class ServerError(RuntimeError):
    """The server could not be started; the message says what to install or change."""


def pg_bin_dir() -> Path:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl, postgres)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        return Path(versions[-1]).parent
    raise ServerError(f"PostgreSQL's server binaries (initdb, pg_ctl) are not installed: "
                      f"{INSTALL} (as root), or put them on PATH")


def _as_owner() -> tuple[list[str], int | None, int | None]:
    """The command prefix and uid/gid to run PostgreSQL as: root hands it to `postgres`."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError("running as root, PostgreSQL needs a non-root user and there is no "
                          f"'postgres' user: {INSTALL} creates it") from None
    return ["runuser", "-u", "postgres", "--"], user.pw_uid, user.pw_gid


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A PostgreSQL cluster in `root/pgdata`, listening on 127.0.0.1:`port` only."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root).resolve()
        self.port = port or free_port()
        self.bin = pg_bin_dir()
        self.prefix, self.uid, self.gid = _as_owner()
        self.data = self.root / "pgdata"
        self.sock = self.root / "pgsock"

    @property
    def url(self) -> str:
        return f"postgresql://kdl@127.0.0.1:{self.port}/mlflow"

    def _run(self, *args: str, check=True) -> subprocess.CompletedProcess:
        out = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise ServerError(f"{Path(args[0]).name} failed: {(out.stderr or out.stdout)[-500:]}")
        return out

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the postgres user walks in to its own folders
        for d in (self.data, self.sock):
            d.mkdir(exist_ok=True)
            d.chmod(0o700)
            if self.uid is not None:
                os.chown(d, self.uid, self.gid)
        if not (self.data / "PG_VERSION").is_file():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "kdl",
                      "--auth=trust", "-E", "UTF8", "--no-instructions")
        log = self.sock / "postgres.log"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-w",
                  "-t", "60", "-o", f"-p {self.port} -h 127.0.0.1 -k {self.sock}", "start")
        out = self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "kdl", "-d", "postgres", "-tAc",
                        "SELECT 1 FROM pg_database WHERE datname='mlflow'")
        if out.stdout.strip() != "1":
            self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                      "-U", "kdl", "mlflow")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                      "stop", check=False)


class MlflowServer:
    """`mlflow server` over a backend store, artifacts proxied to `artifacts`."""

    def __init__(self, backend_uri: str, artifacts: Path, host: str = "127.0.0.1",
                 port: int | None = None, log: Path | None = None):
        self.backend_uri, self.artifacts = backend_uri, Path(artifacts)
        self.host, self.port = host, port or free_port()
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 180) -> None:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", self.host,
             "--port", str(self.port), "--backend-store-uri", self.backend_uri,
             "--artifacts-destination", str(self.artifacts), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=server_env(),
            start_new_session=True)  # its own process group: the server spawns workers
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"mlflow server exited with {self.proc.returncode}"
                                  + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"mlflow server did not answer {self.url}/health in {timeout:.0f} s")

    def stop(self, sig=signal.SIGTERM) -> None:
        """Stop the server and the workers it started."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass


class TeamServer:
    """PostgreSQL + `mlflow server` under one folder; a context manager."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int | None = None,
                 pg_port: int | None = None):
        self.root = Path(root).resolve()
        self.postgres = Postgres(self.root, pg_port)
        self.mlflow = MlflowServer(self.postgres.url, self.root / "artifacts", host, port,
                                   log=self.root / "mlflow-server.log")

    @property
    def url(self) -> str:
        return self.mlflow.url

    def start(self) -> TeamServer:
        self.postgres.start()
        try:
            self.mlflow.start()
        except BaseException:
            self.postgres.stop()
            raise
        return self

    def stop(self) -> None:
        self.mlflow.stop()
        self.postgres.stop()

    def __enter__(self) -> TeamServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(root: Path, host: str, port: int, log=print) -> int:
    """Start the team server in the foreground until Ctrl-C / SIGTERM."""
    server = TeamServer(root, host, port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with server:
        log(f"MLflow tracking server: {server.url}  (PostgreSQL store {server.postgres.url}, "
            f"artifacts {server.mlflow.artifacts})")
        log(f"use it: export MLFLOW_TRACKING_URI={server.url}    stop: Ctrl-C")
        try:
            while server.mlflow.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0
