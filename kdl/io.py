"""Atomic file writes, and the one measure of a file's size.

Atomic writes: write to a temporary path beside the target, then rename. A crash
or an error mid-write never leaves a half-written file or directory where a
finished one is expected. Files get the mode any other new file gets (0666 less
the process umask), not `mkstemp`'s private 0600.

`file_sizes` is the size every report logs (export, compression, bench).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple


def current_umask() -> int:
    """The process umask, read without changing it (Linux), else by set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed to `path` (file or directory).

    On an error the temporary path is removed and `path`, if it existed, is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp = tmp_root / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def save_figure(fig: Any, path: Path | str, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (the suffix picks the format), then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


GZIP_LEVEL = 9


class FileSizes(NamedTuple):
    size_bytes: int  # raw bytes on disk (a directory: the sum over its files)
    gzip_bytes: int  # gzip level `GZIP_LEVEL` (a directory: a gzipped tar of it)


class _Counter(io.RawIOBase):
    """A write-only stream that only counts what is written to it."""

    def __init__(self):
        self.n = 0

    def writable(self):
        return True

    def write(self, b):
        self.n += len(b)
        return len(b)


def _reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def file_sizes(path: Path | str) -> FileSizes:
    """Raw and gzipped bytes of a file or directory: what an app download costs.

    The one size measure of kdl: the export report, the compression report and the
    bench all log it as `size_bytes` / `gzip_bytes`. gzip level 9 (`GZIP_LEVEL`),
    what a model is compressed with for shipping, and what the compression gates
    were set on. A directory (a SavedModel) is measured as one gzipped tar of it,
    the archive a user would download (entries in sorted order, times and owners
    zeroed, so the figure does not depend on when or by whom it was written);
    its raw size is the sum of its files. Streamed: large files are not held in
    memory.

    Raises:
        FileNotFoundError: nothing at `path`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory to measure")
    sink = _Counter()
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            with tarfile.open(fileobj=gz, mode="w") as tar:
                tar.add(path, arcname=path.name, filter=_reproducible)
        else:
            size = path.stat().st_size
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    gz.write(chunk)
    return FileSizes(size, sink.n)
