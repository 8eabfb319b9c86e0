"""`make test`'s runner (tests/run_passes.py): its temp files go when every part passed and
stay, named, when one failed. The parts' pytest processes are stood in for by a function
that writes into the part's temp folder as pytest does (`--basetemp`)."""

import pytest

from tests import run_passes

pytestmark = pytest.mark.once  # the runner is backend-independent


@pytest.mark.parametrize("failing", [None, "torch:0"])
def test_temp_files_go_after_a_green_run_and_stay_after_a_red_one(tmp_path, monkeypatch,
                                                                   capsys, failing):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(run_passes.tempfile, "tempdir", None)  # TMPDIR read again

    def part(name, pytest_args, tmp, fast_xla):
        folder = tmp / name.replace(":", "-")
        folder.mkdir(parents=True)
        (folder / "model.keras").write_bytes(b"x")
        return (1 if name == failing else 0), f"{name} ran\n", 0.0

    monkeypatch.setattr(run_passes, "run_part", part)
    code = run_passes.main(["--jobs", "2", "--backends", "torch,jax"])
    out = capsys.readouterr().out
    left = list(tmp_path.glob("kdl-test-*"))
    assert "torch:0 ran" in out and "jax:1 ran" in out
    if failing is None:
        assert code == 0 and left == []
    else:
        assert code == 1 and len(left) == 1 and f"temp files: {left[0]}" in out
        assert (left[0] / "torch-0" / "model.keras").is_file()
