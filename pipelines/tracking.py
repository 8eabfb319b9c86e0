"""MLflow tracking that never kills training.

One parent run per pipeline invocation, one nested run per stage. Every call
goes through `Tracker._safe`: the first MLflow error (server gone, disk full,
bad response) prints one warning and turns tracking off for the rest of the
invocation, while training and the artifacts on disk carry on.

Metrics are logged off the training loop: `log_metrics` puts a batch on a
bounded queue that one background thread sends to MLflow (coalesced into as
few `log_batch` calls as it can). The queue is flushed when a stage's run
ends, when the parent run ends, and on failure (`end("FAILED")`); an error in
the thread is reported by the main thread (the same one warning) at its next
tracking call, so the failure policy is the same as for synchronous calls.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Fail fast when a tracking server is down, instead of MLflow's minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")

import keras  # noqa: E402

from kdl.backend import keras_private  # noqa: E402
from pipelines.config import PROJECT_ROOT, TrackingConfig  # noqa: E402

MAX_PARAM_LEN = 6000
# The experiment kind that makes the MLflow UI open the training view (runs table, charts),
# not the GenAI overview.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
MAX_BATCH_METRICS = 1000  # MLflow's limit per log_batch call
QUEUE_SIZE = 10_000  # metric batches waiting; a full queue makes log_metrics wait


def default_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the project's own SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def run_label(run_dir: Path | str) -> str:
    """A run directory as it may leave this machine: relative to the project root when it
    is inside it, else `<experiment>/<run>` (never the machine's absolute path)."""
    run_dir = Path(run_dir).resolve()
    try:
        return str(run_dir.relative_to(PROJECT_ROOT))
    except ValueError:
        return f"{run_dir.parent.name}/{run_dir.name}"


def strip_credentials(uri: str) -> str:
    """`uri` without its `user:password@`. The credentials move to MLflow's documented
    `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` variables of this process (unless
    they are set), so nothing written or printed (config.yaml, run.json, MLflow params,
    the summary table, warnings) carries them."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    if user:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    return urlunsplit(parts._replace(netloc=host))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, text=True,
                             capture_output=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_tags() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    tags = {"backend": keras.backend.backend(), "git_commit": git_commit(),
            "python": sys.version.split()[0]}
    for pkg in ("keras", "tensorflow", "jax", "torch", "mlflow", "ai-edge-litert"):
        try:
            tags[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            pass
    return tags


class Tracker:
    """Wraps an MLflow client; see the module docstring for the failure policy.

    Args:
        cfg: the tracking section of the config.
        experiment: the MLflow experiment name.
        synchronous: log metrics in the calling thread (the benchmark's baseline);
            by default a background thread sends them.
    """

    def __init__(self, cfg: TrackingConfig, experiment: str, synchronous: bool = False):
        self.cfg = cfg
        self.synchronous = synchronous
        self.enabled = cfg.enabled
        self.uri = strip_credentials(cfg.uri or default_uri())
        self.experiment = cfg.experiment or experiment
        self.parent_id: str | None = None
        self.run_id: str | None = None  # the run metrics go to: the stage's, else the parent
        self.error: str | None = None
        self._client = None
        self._experiment_id = None
        self._queue: queue.Queue | None = None  # metric batches for the background thread
        self._thread_error: str | None = None  # its first error, reported by _check_thread

    # -- failure policy ---------------------------------------------------------------

    def _disable(self, error: str) -> None:
        self.enabled = False
        self.error = error
        warnings.warn(f"MLflow tracking disabled for the rest of this run ({error}). "
                      "Training continues; artifacts on disk are complete.", stacklevel=3)

    def _safe(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        self._check_thread()
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # any MLflow/network/storage error: warn once, stop tracking
            self._disable(f"{what}: {type(e).__name__}: {str(e)[:300]}")
            return None

    # -- background metric logging ----------------------------------------------------

    def _check_thread(self) -> None:
        """Report the background thread's error, from the caller's thread."""
        if self._thread_error is not None and self.enabled:
            self._disable(self._thread_error)

    def _send(self, batches: list[tuple[str, dict[str, Any], int, int]]) -> None:
        """Log queued `(run_id, metrics, step, time)` batches, coalesced per run.

        A metric's value may be a zero-argument callable, called here (in the
        background thread): a figure that is costly to read inside the loop.
        """
        from mlflow.entities import Metric

        by_run: dict[str, list] = {}
        for run_id, metrics, step, now in batches:
            items = by_run.setdefault(run_id, [])
            for k, v in metrics.items():
                if callable(v):
                    try:
                        v = v()
                    except Exception:  # a figure that cannot be read is left out
                        continue
                if isinstance(v, int | float) and not isinstance(v, bool):
                    items.append(Metric(k, float(v), now, step))
        for run_id, items in by_run.items():
            for i in range(0, len(items), MAX_BATCH_METRICS):
                if not self.enabled or self._thread_error is not None:
                    return
                self.client.log_batch(run_id, metrics=items[i:i + MAX_BATCH_METRICS])

    def _send_queued(self) -> None:
        """The background thread: send what is queued, in as few calls as it can."""
        q = self._queue
        while True:
            batches = [q.get()]
            while True:
                try:
                    batches.append(q.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send(batches)
            except Exception as e:  # the caller's thread warns and stops tracking
                self._thread_error = f"log metrics: {type(e).__name__}: {str(e)[:300]}"
            finally:
                for _ in batches:
                    q.task_done()

    def flush(self) -> None:
        """Wait until every queued metric is sent (or tracking has failed)."""
        if self._queue is not None:
            self._queue.join()
        self._check_thread()

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException  # mlflow loads lazily (start-up cost)

        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is not None:
                self._experiment_id = exp.experiment_id
                if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # made before the tag
                    self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
            else:
                location = None
                if self.uri.startswith("sqlite:///"):  # local store: artifacts beside it
                    db = Path(self.uri.removeprefix("sqlite:///"))
                    location = (db.parent / "mlartifacts").as_uri()
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=location,
                        tags=dict([EXPERIMENT_KIND]))
                except MlflowException as e:  # another run created it since we looked
                    if e.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    exp = self.client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
                    self._experiment_id = exp.experiment_id
        return self._experiment_id

    # -- runs -------------------------------------------------------------------------

    def start(self, run_name: str, tags: dict[str, str], parent_id: str | None = None) -> None:
        """Start the parent run (or, with `parent_id`, reattach to an earlier one)."""

        def _start():
            if parent_id:
                return parent_id
            return self.client.create_run(self._experiment(), run_name=run_name,
                                          tags=tags).info.run_id

        self.parent_id = self._safe("start run", _start)
        self.run_id = self.parent_id

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """A nested run for one stage; FAILED if the block raises."""
        parent = self.parent_id

        def _start():
            return self.client.create_run(
                self._experiment(), run_name=name,
                tags={"mlflow.parentRunId": parent, "stage": name}).info.run_id

        stage_id = self._safe("start stage run", _start) if parent else None
        self.run_id = stage_id or parent
        try:
            yield
        except BaseException:
            self.flush()
            if stage_id:
                self._safe("end stage run", self.client.set_terminated, stage_id, "FAILED")
            raise
        else:
            self.flush()
            if stage_id:
                self._safe("end stage run", self.client.set_terminated, stage_id, "FINISHED")
        finally:
            self.run_id = parent

    def end(self, status: str = "FINISHED") -> None:
        """Flush the queued metrics and mark the parent run `status`."""
        self.flush()
        if self.parent_id:
            self._safe("end run", self.client.set_terminated, self.parent_id, status)

    # -- logging ----------------------------------------------------------------------

    def log_params(self, params: dict[str, Any], run_id: str | None = None) -> None:
        from mlflow.entities import Param

        run_id = run_id or self.run_id
        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            if run_id:
                self._safe("log params", self.client.log_batch, run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None,
                    run_id: str | None = None) -> None:
        """Queue `metrics` for the background thread (see the module docstring).

        Non-numeric values are left out; a zero-argument callable is called by
        the thread that sends (see `_send`).
        """
        self._check_thread()
        run_id = run_id or self.run_id
        if not (run_id and metrics and self.enabled):
            return
        batch = (run_id, dict(metrics), step or 0, int(time.time() * 1000))
        if self.synchronous:
            self._safe("log metrics", self._send, [batch])
            return
        if self._queue is None:
            self.client  # noqa: B018 -- made here, not in two threads at once
            self._queue = queue.Queue(QUEUE_SIZE)
            threading.Thread(target=self._send_queued, name="kdl-mlflow-metrics",
                             daemon=True).start()
        self._queue.put(batch)

    def set_tags(self, tags: dict[str, Any], run_id: str | None = None) -> None:
        run_id = run_id or self.run_id
        for k, v in tags.items():
            if run_id:
                self._safe("set tag", self.client.set_tag, run_id, k, str(v))

    def log_dataset(self, features: Any, targets: Any, *, name: str, digest: str,
                    source: str | None, context: str = "training",
                    run_id: str | None = None) -> None:
        """Log a dataset as an MLflow dataset input of the run (`log_input`): its name,
        `digest` (kdl's data fingerprint, so two runs on the same data show the same
        dataset), source, schema and row count; the Datasets column of the runs table.

        Args:
            features: an array, or a dict of named arrays (several inputs).
            targets: an array, or None.
            source: the file or directory the data came from; None: a built-in dataset
                (a code source tagged `kdl.dataset=<name>`).
            context: the `mlflow.data.context` tag ("training", "evaluation", ...).
        """
        run_id = run_id or self.run_id
        if not run_id or not self.enabled:
            return
        import mlflow.data
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.entities import Dataset, DatasetInput, InputTag

        try:  # describing the data is not MLflow talking: a failure skips it, tracking stays on
            origin = source or CodeDatasetSource({"kdl.dataset": name})
            with warnings.catch_warnings():  # a local path "can be interpreted in multiple
                warnings.filterwarnings(      # ways" (two local sources): it is local
                    "ignore", "The specified dataset source", UserWarning)
                d = mlflow.data.from_numpy(features, source=origin, targets=targets,
                                           name=name, digest=digest).to_dict()
        except Exception as e:  # noqa: BLE001 - an array MLflow cannot describe
            warnings.warn(f"MLflow dataset input not logged: {type(e).__name__}: {e}",
                          stacklevel=2)
            return
        entry = DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"],
                                     d.get("schema"), d.get("profile")),
                             tags=[InputTag("mlflow.data.context", context)])
        self._safe(f"log dataset {name}", self.client.log_inputs, run_id, datasets=[entry])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not self.run_id or not path.exists():
            return
        fn = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
        self._safe(f"log artifact {path.name}", fn, self.run_id, str(path), artifact_path)

    def log_table(self, rows: list[dict[str, Any]], artifact_file: str,
                  run_id: str | None = None) -> None:
        """Log rows (dicts with the same keys) as an MLflow table (`mlflow.log_table`)."""
        run_id = run_id or self.run_id
        if not run_id or not rows:
            return
        columns = {k: [r.get(k) for r in rows] for k in rows[0]}
        self._safe(f"log table {artifact_file}", self.client.log_table, run_id, columns,
                   artifact_file)

    def log_keras_model(self, model: keras.Model, example: Any, registered_name: str | None):
        """Log the model with an input/output signature; register it if a name is given.

        Returns the registered model version (or None).
        """
        if not self.run_id:
            return None

        def _log():
            import mlflow
            from mlflow.models import infer_signature

            mlflow.set_tracking_uri(self.uri)
            signature = infer_signature(example, model.predict(example, verbose=0))
            reqs = [f"keras=={keras.__version__}"]
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.keras.log_model(model, name="model", signature=signature,
                                              registered_model_name=registered_name,
                                              pip_requirements=reqs)
            return info.registered_model_version

        return self._safe("log model", _log)

    # -- runs left RUNNING, the model registry ----------------------------------------

    def kill_stale_children(self, parent_id: str) -> int:
        """Mark the stage runs of `parent_id` still RUNNING (left by a killed process)
        KILLED; returns how many (0 when tracking is off or failed)."""

        def _kill():
            runs = self.client.search_runs(
                [self.client.get_run(parent_id).info.experiment_id],
                f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'")
            for r in runs:
                self.client.set_terminated(r.info.run_id, "KILLED")
            return len(runs)

        return self._safe("close stale runs", _kill) or 0

    def register_bundle(self, name: str, artifact_path: str, tags: dict[str, str], *,
                        alias: str, kind: str) -> str | None:
        """Register the current run's artifact directory `artifact_path` as a version of
        model `name` (tagged `kind=<kind>` and `tags`) and move `alias` to it, in the order
        that survives a kill (see `PENDING`).

        Returns:
            "<name> v<N>", or None when tracking is off or failed (warned once).
        """
        run_id = self.run_id
        if not run_id:
            return None

        def _register():
            from mlflow.exceptions import MlflowException

            client = self.client
            try:
                client.get_registered_model(name)
            except MlflowException:
                client.create_registered_model(name)
            _repair_alias(client, name, alias, kind)
            source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
            mv = client.create_model_version(
                name, source=source, run_id=run_id,
                tags={**tags, "kind": kind, STATUS_TAG: PENDING})
            if int(mv.version) > _alias_version(client, name, alias):  # forward only
                client.set_registered_model_alias(name, alias, mv.version)
            client.set_model_version_tag(name, mv.version, STATUS_TAG, PASSED)
            return f"{name} v{mv.version}"

        return self._safe("register bundle", _register)

    def keras_callback(self, prefix: str) -> keras.callbacks.Callback:
        return _EpochMetrics(self, prefix)


# The registry's promise, kept through a kill at any point (tests/export/test_registry_kill.py):
# the alias (`candidate`) points at a version only after that version's bundle was verified
# and its artifacts logged, and never at an older version while a newer one is tagged
# `verify_bundle=passed`. So a version is created `pending`, the alias moves (forward only),
# and only then does the version become `passed`. A kill after the creation leaves a
# `pending` version and the alias on the previous candidate; a kill after the alias move
# leaves the candidate `pending`. The next registration of the model repairs both:
# a pending candidate becomes `passed`, a pending version older than the candidate
# `interrupted` (its bundle is complete but it never became the candidate).
STATUS_TAG = "verify_bundle"
PENDING, PASSED, INTERRUPTED = "pending", "passed", "interrupted"


def _alias_version(client, name: str, alias: str) -> int:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return 0


def _repair_alias(client, name: str, alias: str, kind: str) -> int:
    """Completes what a killed registration left; returns the alias's version (0: none)."""
    versions = client.search_model_versions(f"name = '{name}'")
    bundles = [mv for mv in versions if mv.tags.get("kind") == kind]
    passed = [int(mv.version) for mv in bundles if mv.tags.get(STATUS_TAG) == PASSED]
    candidate = _alias_version(client, name, alias)
    if passed and max(passed) > candidate:  # a store written before this ordering
        candidate = max(passed)
        client.set_registered_model_alias(name, alias, str(candidate))
    for mv in bundles:
        if mv.tags.get(STATUS_TAG) != PENDING:
            continue
        if int(mv.version) == candidate:
            client.set_model_version_tag(name, mv.version, STATUS_TAG, PASSED)
        elif int(mv.version) < candidate:
            client.set_model_version_tag(name, mv.version, STATUS_TAG, INTERRUPTED)
    return candidate


def mark_failed(uri: str, run_id: str) -> None:
    """End run `run_id` FAILED if it is still RUNNING (its process was stopped before it
    could); raises what MLflow raises."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, "FAILED")


class _EpochMetrics(keras.callbacks.Callback):
    """Logs each epoch's Keras logs (and the learning rate) as `<prefix><name>`.

    A schedule's rate is evaluated by the tracker's sending thread, a few
    milliseconds after the epoch's end: a schedule is a handful of eager ops (tens
    of milliseconds on a loaded CPU with TensorFlow) that the loop need not wait
    for. The thread gets the schedule and the step, never the model: on JAX,
    touching the model from another thread mid-epoch re-attaches training state
    that the loop has already donated to its next step ("Buffer has been deleted
    or donated").
    """

    def __init__(self, tracker: Tracker, prefix: str):
        super().__init__()
        self.tracker, self.prefix = tracker, prefix

    def _learning_rate(self):
        """The rate now (a constant) or a callable of the schedule at this step."""
        optimizer = self.model.optimizer  # the loop's thread: state attached at epoch end
        schedule = keras_private.learning_rate_schedule(optimizer)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            step = int(keras.ops.convert_to_numpy(optimizer.iterations))
            return lambda: float(keras.ops.convert_to_numpy(schedule(step)))
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if not self.tracker.enabled:
            return
        metrics = {f"{self.prefix}{k}": v for k, v in (logs or {}).items()}
        metrics[f"{self.prefix}learning_rate"] = self._learning_rate()
        self.tracker.log_metrics(metrics, step=epoch + 1)
