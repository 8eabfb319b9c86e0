"""`make test`: the fast suite once per Keras backend, the passes run side by side.

Keras takes one backend per process, so the suite runs once per backend, each in processes
of its own. A single pass keeps about one core busy (tracing, compiling and tiny ops are
single-threaded Python and C++), so on a machine with more cores the passes are cut into
parts and `--jobs` parts run at once, longest first. A part is a set of test folders: a
folder's conftest fixtures are built in one process, as in a whole pass.

Each part's output is printed whole when it ends, under its name and time; the exit status
is 1 when any part failed (and names them, keeping their temp files), 0 otherwise (the temp
files removed). Extra arguments go to every pytest.

    python tests/run_passes.py [--jobs N] [--backends tensorflow,jax,torch] [-- PYTEST_ARGS]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The parts of each backend's pass (the TensorFlow pass also runs the `once` tests, most of
# them under tests/pipelines). A part lists folders to run; None means "every folder not
# named in another part". ORDER is the order parts start in: longest first, by CI's
# fresh-clone times (2026-11-29, s): tensorflow:2 583, tensorflow:0 551, jax:1 489,
# jax:0 331, tensorflow:1 248, torch:0 194. On 2 jobs that ends after about 1,234 s of
# parts instead of the 1,382 s the order shortest-first-in-pairs took.
PARTS = {
    "tensorflow": [["tests/pipelines"], ["tests/models"], None],
    "jax": [["tests/models"], None],
    "torch": [None],
}
ORDER = ["tensorflow:2", "tensorflow:0", "jax:1", "jax:0", "tensorflow:1", "torch:0"]


def part_args(backend: str, index: int) -> list[str]:
    folders = PARTS[backend][index]
    if folders is not None:
        return folders
    named = [f for p in PARTS[backend] if p for f in p]
    return ["tests", *(f"--ignore={f}" for f in named)]


def run_part(name: str, pytest_args: list[str], tmp: Path, fast_xla: str) -> tuple[int, str, float]:
    backend, index = _split(name)
    env = dict(os.environ, KERAS_BACKEND=backend,
               XLA_FLAGS=f"{fast_xla} {os.environ.get('XLA_FLAGS', '')}".strip())
    cmd = [sys.executable, "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider",
           f"--basetemp={tmp / name.replace(':', '-')}", *part_args(backend, index),
           *pytest_args]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout, time.monotonic() - start


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, len(ORDER)))
    ap.add_argument("--backends", default="tensorflow,jax,torch")
    ap.add_argument("--fast-xla", default="", help="XLA_FLAGS prepended for every part")
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.pytest_args = argv[cut + 1:]
    backends = [b for b in args.backends.replace(",", " ").split() if b]
    unknown = sorted(set(backends) - set(PARTS))
    if unknown:
        print(f"run_passes: unknown backend(s) {unknown}; choose from {sorted(PARTS)}",
              file=sys.stderr)
        return 2
    queue = [n for n in ORDER if _split(n)[0] in backends]
    failed: list[str] = []
    lock = threading.Lock()
    tmp = Path(tempfile.mkdtemp(prefix="kdl-test-"))
    began = time.monotonic()

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                name = queue.pop(0)
                print(f"--- {name} started", flush=True)
            rc, out, secs = run_part(name, args.pytest_args, tmp, args.fast_xla)
            with lock:
                print(f"=== KERAS_BACKEND={_split(name)[0]} part {name} "
                      f"({' '.join(part_args(*_split(name)))}): rc {rc} in {secs:.0f} s",
                      flush=True)
                print(out, flush=True)
                if rc not in (0, 5):  # 5: every test of the part deselected by PYTEST_ARGS
                    failed.append(name)

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"all parts ended in {time.monotonic() - began:.0f} s ({args.jobs} at a time)")
    if failed:  # their pytest temp files stay, to look at
        print(f"FAILED on: {' '.join(sorted(failed))} (temp files: {tmp})")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)  # every part passed: nothing left in /tmp
    return 0


def _split(name: str) -> tuple[str, int]:
    backend, index = name.split(":")
    return backend, int(index)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
