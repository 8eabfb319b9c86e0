"""Atomic writes: a finished file or nothing, with the mode every other new file gets."""

import os
import stat

import pytest

from kdl.io import atomic_write_json, current_umask

pytestmark = pytest.mark.once


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_follow_the_umask_like_open(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        atomic_write_json(tmp_path / "run.json", {"a": 1})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"run.json": 0o666 & ~mask, "plain.txt": 0o666 & ~mask}


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"a": object()})
    assert list(tmp_path.iterdir()) == []
