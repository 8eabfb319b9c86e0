"""One bundle registration, killed where asked: `python registry_worker.py URI BUNDLE [KILL]`.

Registers `BUNDLE` under the model `kdl-registry-test` through the export
stage's own `pipelines.mobile.register_candidate` on a real MLflow store, in an
export stage run. With `KILL` (an `MlflowClient` method name), the process
SIGKILLs itself the moment the registration calls that method: nothing after
that point runs, exactly as if the machine died there.
"""

import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from pipelines import mobile
from pipelines.config import TrackingConfig
from pipelines.tracking import Tracker


def main(uri: str, bundle: str, kill: str | None = None) -> None:
    if kill:
        setattr(MlflowClient, kill, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    cfg = SimpleNamespace(tracking=TrackingConfig(uri=uri, model_name="kdl-registry-test"))
    tracker = Tracker(cfg.tracking, "registry-test")
    tracker.start("run", {})
    with tracker.stage("export"):
        print(mobile.register_candidate(tracker, cfg, Path(bundle).parent, Path(bundle),
                                        ["tflite_fp32"]), flush=True)
    tracker.end()


if __name__ == "__main__":
    main(*sys.argv[1:])
