"""The registry stays consistent through a kill at any point of a bundle's registration.

The promise (pipelines/tracking.py, `PENDING`): `candidate` points only at a version whose
bundle was verified and logged, and never at an older version while a newer
one is tagged `verify_bundle=passed`. Each step below runs a real registration
in a real subprocess on a real SQLite MLflow store, SIGKILLed at one point.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("registry_worker.py")
NAME = "kdl-registry-test"


def register(uri: str, bundle: Path, kill: str | None = None) -> int:
    """One registration: in this process, or killed at `kill` in a subprocess of its own
    (JAX backend there: the lightest to import; registration is backend-independent)."""
    if kill is None:
        from tests.export.registry_worker import main

        main(uri, str(bundle))
        return 0
    proc = subprocess.run([sys.executable, str(WORKER), uri, str(bundle), kill],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    return proc.returncode


def state(client) -> tuple[int, dict[int, str]]:
    versions = client.search_model_versions(f"name = '{NAME}'")
    candidate = int(client.get_model_version_by_alias(NAME, "candidate").version)
    return candidate, {int(mv.version): mv.tags["verify_bundle"] for mv in versions}


def assert_promise(client) -> None:
    candidate, tags = state(client)
    newer_passed = [v for v, t in tags.items() if v > candidate and t == "passed"]
    assert not newer_passed, (candidate, tags)
    mv = client.get_model_version(NAME, str(candidate))
    files = {f.path for f in client.list_artifacts(mv.run_id, "bundle")}
    assert "bundle/contract.json" in files  # its bundle is complete


@pytest.mark.once
def test_a_kill_never_leaves_candidate_behind_a_verified_version(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bundle = tmp_path / "run" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "contract.json").write_text("{}")
    client = MlflowClient(uri)

    register(uri, bundle)
    assert state(client) == (1, {1: "passed"})

    # killed after creating v2, before the alias moved: v2 stays pending, candidate v1
    register(uri, bundle, kill="set_registered_model_alias")
    assert state(client) == (1, {1: "passed", 2: "pending"})
    assert_promise(client)

    # killed after the alias moved to v3, before v3 was tagged passed
    register(uri, bundle, kill="set_model_version_tag")
    assert state(client) == (3, {1: "passed", 2: "pending", 3: "pending"})
    assert_promise(client)

    # the next registration repairs what the kills left
    register(uri, bundle)
    assert state(client) == (4, {1: "passed", 2: "interrupted", 3: "passed", 4: "passed"})
    assert_promise(client)
