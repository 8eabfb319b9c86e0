"""`python -m pipelines launch --processes N <recipe>`: N local processes train one run.

Each process is `python -m pipelines run <recipe> ...` with the standard
variables of a multi-process job set for 127.0.0.1: Keras's
`KERAS_DISTRIBUTION_JOB_ADDRESSES` / `_NUM_PROCESSES` / `_PROCESS_ID` (JAX:
`jax.distributed.initialize`) and TensorFlow's `TF_CONFIG`
(`MultiWorkerMirroredStrategy`). On SLURM or Kubernetes the scheduler starts
the processes and sets the same variables (docs/scale.md); this helper is for a
laptop and for tests.

Process 0 prints as usual and is the only one that writes the run directory
and tracks; the others' output goes to a log file, shown if they fail. When
one process fails, the others are stopped (SIGTERM, then SIGKILL) and the
launch fails with its exit code; process 0's MLflow run is then marked FAILED.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GRACE_S = 10.0  # between SIGTERM and SIGKILL when stopping the other processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_envs(n: int, host: str = "127.0.0.1") -> list[dict[str, str]]:
    """The environment of each of `n` processes: Keras's variables and TF_CONFIG."""
    ports = [free_port() for _ in range(n)]
    workers = [f"{host}:{p}" for p in ports]
    return [{"KERAS_DISTRIBUTION_JOB_ADDRESSES": workers[0],
             "KERAS_DISTRIBUTION_NUM_PROCESSES": str(n),
             "KERAS_DISTRIBUTION_PROCESS_ID": str(i),
             "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                      "task": {"type": "worker", "index": i}})}
            for i in range(n)]


def _default_sigterm() -> None:
    """In the child: SIGTERM stops it, even where the launcher's parent ignores SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def supervise(commands: list[list[str]], envs: list[dict[str, str]], log=print,
              poll_s: float = 0.2) -> tuple[int, list[str]]:
    """Run the commands at once; the first to fail stops the rest.

    Returns `(exit code, output of process 0)`: 0 when all succeeded, else the
    first failing process's code. Process 0's output is echoed live to `log`;
    the others' is kept in files and shown when they fail.
    """
    logs = [tempfile.TemporaryFile(mode="w+") for _ in commands[1:]]
    out0: list[str] = []
    procs = [subprocess.Popen(commands[0], env={**os.environ, **envs[0]}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              preexec_fn=_default_sigterm)]
    procs += [subprocess.Popen(cmd, env={**os.environ, **env}, stdout=fh,
                               stderr=subprocess.STDOUT, preexec_fn=_default_sigterm)
              for cmd, env, fh in zip(commands[1:], envs[1:], logs, strict=True)]

    def echo():
        for line in procs[0].stdout:
            out0.append(line)
            log(line.rstrip("\n"))

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    code = 0
    try:
        while [p.poll() for p in procs].count(None):  # poll every one (no short-circuit)
            if any(p.returncode not in (None, 0) for p in procs):
                break
            time.sleep(poll_s)
        failed = [(i, p.returncode) for i, p in enumerate(procs)
                  if p.returncode not in (None, 0)]
        if failed:
            i, code = failed[0]
            log(f"launch: process {i} failed (exit {code}); stopping the others")
            if i > 0:
                logs[i - 1].seek(0)
                log("".join(logs[i - 1].read().splitlines(True)[-30:]).rstrip())
            _stop(procs)
    except BaseException:
        _stop(procs)
        raise
    finally:
        reader.join(timeout=5)
        for fh in logs:
            fh.close()
    return code, out0


def _mark_failed(output: list[str], run_dir: Path | None = None) -> None:
    """Process 0 was stopped before it could end its MLflow run: end it FAILED."""
    run_dir = run_dir or next((line.split("run directory:", 1)[1].strip() for line in output
                               if line.startswith("run directory:")), None)
    info = Path(run_dir) / "run.json" if run_dir else None
    if info is None or not info.is_file():
        return
    meta = json.loads(info.read_text())
    if not meta.get("mlflow_run_id"):
        return
    try:
        from pipelines.tracking import mark_failed

        mark_failed(meta["tracking_uri"], meta["mlflow_run_id"])
    except Exception as e:  # tracking never decides the exit code
        print(f"launch: could not mark MLflow run {meta['mlflow_run_id']} FAILED: {e}",
              file=sys.stderr)


def launch(recipe: str | None, overrides: list[str], processes: int, stages: str | None = None,
           log=print, resume: Path | None = None) -> int:
    """Start `processes` local processes of `pipelines run` (`run --resume RUN_DIR` with
    `resume`); return the launch's exit code."""
    cmd = [sys.executable, "-m", "pipelines", "run"]
    cmd += ["--resume", str(resume)] if resume is not None else [recipe]
    for text in overrides:
        cmd += ["--set", text]
    if stages:
        cmd += ["--stages", stages]
    code, out0 = supervise([cmd] * processes, process_envs(processes), log=log)
    if code != 0:
        _mark_failed(out0, resume)
    return code
