"""Training on several devices and processes, on the engines Keras supports.

- JAX: `keras.distribution.DataParallel` (variables replicated, the global batch
  split over a one-axis `DeviceMesh`) and `ModelParallel` (a `DeviceMesh` and a
  `LayoutMap` from variable-path regexes to mesh axes). Several processes join
  through `keras.distribution.initialize` (`jax.distributed.initialize`); Keras
  then shards a `tf.data` input per process (`Distribution.distribute_dataset`).
- TensorFlow: `tf.distribute.MirroredStrategy` over this process's devices;
  `MultiWorkerMirroredStrategy` when `$TF_CONFIG` names several workers (it must
  be made before TensorFlow starts its runtime: call `setup` first thing).
  Data parallel only.
- PyTorch: Keras has no distribution API for it (`keras.distribution` is JAX's;
  Keras's torch guide wraps a hand-written loop, not `fit`, in DDP): refused.

Simulated devices for tests: `XLA_FLAGS=--xla_force_host_platform_device_count=N`
gives JAX N CPU devices; `setup` reads the same flag on TensorFlow and splits the
CPU into N logical devices.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import keras

from kdl.backend import keras_private

SUPPORTED = {"jax": ("data_parallel", "model_parallel"), "tensorflow": ("data_parallel",)}
_SIMULATED = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def check_config(d, batch_size: int, backend: str | None = None,
                 processes: int | None = None) -> str | None:
    """What is wrong with a `DistributionConfig` before any device is touched, or None.

    `processes`: how many processes will train the run (a launcher knows it before
    starting them); by default the config's, else the environment's (`process_env`)."""
    backend = backend or keras.backend.backend()
    key = "train.distribution"
    if d.kind == "none":
        for name in ("mesh", "layout"):
            if getattr(d, name):
                return f"{key}.{name} needs {key}.kind=model_parallel (kind is 'none')"
        return None
    if backend not in SUPPORTED:
        return (f"{key}.kind={d.kind} needs the jax or tensorflow backend: Keras has no "
                f"distribution API for {backend}; set KERAS_BACKEND=jax or tensorflow, "
                f"or {key}.kind=none")
    if d.kind not in SUPPORTED[backend]:
        return (f"{key}.kind={d.kind} needs the jax backend (keras.distribution."
                f"ModelParallel); {backend} supports {', '.join(SUPPORTED[backend])}")
    if d.devices != "all" and d.devices < 1:
        return f"{key}.devices must be >= 1 or 'all' (got {d.devices})"
    if any(not isinstance(n, int) or n < 1 for n in d.mesh.values()):
        return f"{key}.mesh: each axis size must be an integer >= 1 (got {d.mesh})"
    if d.kind == "data_parallel":
        if d.layout:
            return f"{key}.layout shards variables: set {key}.kind=model_parallel"
        if len(d.mesh) > 1:
            return f"{key}.mesh: data_parallel takes one axis (the batch), got {list(d.mesh)}"
    else:
        if len(d.mesh) < 1 or not d.layout:
            return (f"{key}: model_parallel needs a mesh and a layout, e.g. "
                    "mesh={batch: 1, model: 2} layout={'dense.*kernel': [null, model]}")
        for regex, axes in d.layout.items():
            try:
                re.compile(regex)
            except re.error as e:
                return f"{key}.layout: {regex!r} is not a regular expression: {e}"
            unknown = [a for a in axes if a is not None and a not in d.mesh]
            if unknown:
                return (f"{key}.layout.{regex}: axis {unknown[0]!r} is not a mesh axis; "
                        f"mesh axes: {', '.join(d.mesh)} (or null)")
    size = math.prod(d.mesh.values()) if d.mesh else None
    if size is not None and d.devices != "all" and size != d.devices:
        return (f"{key}.mesh has {size} devices ({d.mesh}) but {key}.devices is "
                f"{d.devices}: make them equal (or devices=all)")
    if d.num_processes is not None and d.num_processes < 1:
        return f"{key}.num_processes must be >= 1 (got {d.num_processes})"
    if d.process_id is not None and not 0 <= d.process_id < (d.num_processes or 1 << 30):
        return f"{key}.process_id must be in [0, num_processes) (got {d.process_id})"
    try:
        count = _process_count(d, processes)
    except ValueError as e:  # a malformed standard variable, named
        return str(e)
    replicas = None
    if d.kind == "model_parallel":
        replicas = next(iter(d.mesh.values()))
    elif d.devices != "all":
        replicas = d.devices * count
    if replicas and batch_size % replicas:
        return (f"data.batch_size {batch_size} does not split over {replicas} data-parallel "
                f"replicas: make it a multiple of {replicas}")
    if backend == "jax" and count > 1 and batch_size % count:  # each feeds its equal shard
        return (f"data.batch_size {batch_size} does not split over {count} processes: "
                f"make it a multiple of {count}")
    return None


def resume_refusal(d, processes: int | None = None, backend: str | None = None) -> str | None:
    """Why `train.checkpoint` (resume) cannot run under `d` with `processes` (default:
    the configured or environment's count), or None.

    One process: every distribution. Several: JAX data parallel, each process
    feeding its shard of every batch from the checkpointed position, process 0
    writing the checkpoint (`shard_feed`). TensorFlow's MultiWorkerMirroredStrategy
    would shard a Python input itself and needs every worker in a save: refused.
    """
    try:
        count = _process_count(d, processes)
    except ValueError as e:  # a malformed standard variable, named
        return str(e)
    backend = backend or keras.backend.backend()
    if d.kind == "none" or count == 1 or (backend == "jax" and d.kind == "data_parallel"):
        return None
    fix = ("set train.checkpoint=false, train on one process, or use KERAS_BACKEND=jax with "
           "train.distribution.kind=data_parallel")
    if backend == "jax":
        return (f"train.checkpoint (resume) on {count} processes runs data_parallel only "
                f"(kind is {d.kind}: its variables span processes); {fix}")
    return (f"train.checkpoint (resume) on {count} {backend} processes is not supported "
            "(MultiWorkerMirroredStrategy would re-shard the resumable input itself and "
            f"needs every worker in each save); {fix}")


def custom_training_refusal(d, model_name: str, backend: str | None = None) -> str | None:
    """Why a model trained by its own loss (`CustomTrainModel`) cannot train under `d`, or
    None. TensorFlow: its train step runs per replica, so each replica draws the same
    random noise (the seed generator is mirrored) for its share of the batch, and its loss
    is not scaled per replica as `compile`'s is (2 devices vs 1: 1.8e-2 after 20 VAE steps).
    JAX computes the global batch's step (measured equal to one device)."""
    if d.kind == "none" or (backend or keras.backend.backend()) != "tensorflow":
        return None
    return (f"train.distribution on tensorflow does not train {model_name!r} (a model trained "
            "by its own loss): each MirroredStrategy replica would draw the same random noise "
            "for its share of the batch; use KERAS_BACKEND=jax or train.distribution.kind=none")


# ----------------------------------------------------------------------------- processes


def _process_count(d, processes: int | None) -> int:
    """A launcher's process count, else the config's or the environment's (`process_env`)."""
    return processes if processes is not None else process_env(d)[1]


def _env_int(key: str, what: str) -> int:
    value = os.environ[key]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{key}={value!r} is not a whole number ({what}): fix it or unset "
                         "it") from None


def process_env(d=None) -> tuple[str | None, int, int]:
    """(coordinator, process count, this process's id): config, else the standard variables.

    Keras's `KERAS_DISTRIBUTION_JOB_ADDRESSES/_NUM_PROCESSES/_PROCESS_ID`, JAX's
    `JAX_COORDINATOR_ADDRESS` (+ `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), SLURM's
    `SLURM_NTASKS/SLURM_PROCID` (coordinator found by JAX), TensorFlow's `TF_CONFIG`.
    Raises `ValueError` naming a variable that is not a whole number, or a `TF_CONFIG`
    that is not JSON.
    """
    env = os.environ
    coordinator = getattr(d, "coordinator", None)
    count = getattr(d, "num_processes", None)
    index = getattr(d, "process_id", None)
    try:
        tf_config = json.loads(env["TF_CONFIG"]) if env.get("TF_CONFIG") else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e.msg}, character {e.pos}): write "
                         "the cluster as TensorFlow documents it, or unset it") from None
    workers = tf_config.get("cluster", {}).get("worker", [])
    for c_key, n_key, i_key in (
            ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
             "KERAS_DISTRIBUTION_PROCESS_ID"),
            ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"),
            (None, "SLURM_NTASKS", "SLURM_PROCID")):
        if n_key in env:
            coordinator = coordinator or (env.get(c_key) if c_key else None)
            count = count if count is not None else _env_int(n_key, "the process count")
            if index is None:
                index = _env_int(i_key, "this process's index") if i_key in env else 0
            break
    else:
        if workers and count is None:
            count = len(workers)
            index = int(tf_config.get("task", {}).get("index", 0))
            coordinator = coordinator or workers[0]
    return coordinator, count or 1, index or 0


# ----------------------------------------------------------------------------- runtime


@dataclass
class Distributed:
    """The distribution a run trains under: enter `scope()` to build, compile and fit.

    Attributes:
        kind: "none", "data_parallel" or "model_parallel".
        devices: the devices used, as "platform:id", all processes'.
        mesh: mesh axis -> size.
        replicas: data-parallel replicas (the global batch is split this many ways).
        num_processes, process_id: this process among the run's processes.
        engine: the Keras `Distribution` (JAX), the `tf.distribute` strategy, or None.
    """

    kind: str = "none"
    devices: list[str] = field(default_factory=list)
    mesh: dict[str, int] = field(default_factory=dict)
    replicas: int = 1
    num_processes: int = 1
    process_id: int = 0
    engine: Any = None
    layout: dict[str, list[str | None]] = field(default_factory=dict)

    @property
    def is_chief(self) -> bool:
        """Process 0: the only one that logs, writes artifacts, exports and registers."""
        return self.process_id == 0

    @property
    def drop_remainder(self) -> bool:
        """JAX splits every batch evenly over the devices: a smaller last batch cannot be."""
        return keras.backend.backend() == "jax" and self.replicas > 1

    @contextlib.contextmanager
    def scope(self):
        global _ACTIVE
        previous, _ACTIVE = _ACTIVE, self
        try:
            with self.engine.scope() if self.engine else contextlib.nullcontext():
                yield self
        finally:
            _ACTIVE = previous

    @property
    def input_shard(self) -> tuple[int, int]:
        """`(this process, processes)` when each process feeds its own part of every batch
        (JAX, several processes), else `(0, 1)`: one process feeds the global batch."""
        if keras.backend.backend() == "jax" and self.num_processes > 1:
            return self.process_id, self.num_processes
        return 0, 1

    @contextlib.contextmanager
    def shard_feed(self, validation=None):
        """Inside: `fit` takes each process's own shard (`input_shard`) of a Python
        input, which Keras's JAX auto-sharding refuses on several processes (it shards
        `tf.data` only). Yields `validation`: a `tf.data` dataset sharded as Keras would
        have, a Python one (already this process's shard) or None as it is; auto-sharding
        is back on after."""
        engine = self.engine
        if self.input_shard[1] == 1 or not hasattr(engine, "auto_shard_dataset"):
            yield validation
            return
        if validation is not None and not isinstance(validation, keras.utils.PyDataset):
            validation = engine.distribute_dataset(validation)
        before, engine.auto_shard_dataset = engine.auto_shard_dataset, False
        try:
            yield validation
        finally:
            engine.auto_shard_dataset = before

    def params(self) -> dict[str, Any]:
        """What to record with the run (MLflow params)."""
        return {"distribution.engine": type(self.engine).__name__ if self.engine else "none",
                "distribution.devices_used": len(self.devices),
                "distribution.replicas": self.replicas,
                "distribution.processes": self.num_processes}

    def local_model(self, model: keras.Model, scratch) -> keras.Model:
        """`model` usable by this process alone: itself on one process; across processes,
        a copy outside the distribution (saved to `scratch`/.keras and loaded back), since
        the original's variables and steps span every process."""
        if self.num_processes == 1:
            return model
        from pathlib import Path

        path = Path(scratch) / "distributed-model.keras"
        model.save(path)
        try:
            return keras.saving.load_model(path)
        finally:
            path.unlink()

    def variable_layouts(self, model: keras.Model) -> dict[str, list[str | None]]:
        """Each variable's partition over the mesh (JAX), `[]` where replicated."""
        out = {}
        for v in model.variables:
            sharding = getattr(getattr(v, "value", None), "sharding", None)
            spec = getattr(sharding, "spec", None)
            out[v.path] = [a for a in spec] if spec is not None else []
        return out

    def check_layout(self, model: keras.Model) -> None:
        """Every layout regex must match a variable of `model` (a typo shards nothing)."""
        paths = [v.path for v in model.variables]
        for regex in self.layout:
            if not any(re.search(regex, p) for p in paths):
                raise ValueError(f"train.distribution.layout: {regex!r} matches no variable; "
                                 f"variable paths: {', '.join(paths[:12])}"
                                 f"{' ...' if len(paths) > 12 else ''}")


_ACTIVE: Distributed | None = None


def keep_epoch_order(model: keras.Model, batch) -> None:
    """TensorFlow: keep a reshuffling dataset's epoch orders those of one device.

    Under a `tf.distribute` strategy, Keras 3.15's `fit` builds the model from
    the first batch of a fresh iterator (`_maybe_symbolic_build`), which uses up
    one reshuffle of a `shuffle(..., reshuffle_each_iteration=True)` dataset:
    epoch 1 then sees one device's epoch-2 order, and so on. Here that build
    takes `batch` (`(x, y)`, for its shapes) instead. Private
    Keras API, checked on Keras 3.15; the equivalence test in
    tests/backend/test_distribution.py fails if it changes.
    """
    if keras.backend.backend() != "tensorflow" or keras_private.symbolic_build(model) is None:
        return
    build = keras_private.symbolic_build(model)

    def build_from_batch(iterator=None, data_batch=None):
        return build(data_batch=batch if data_batch is None else data_batch)

    keras_private.set_symbolic_build(model, build_from_batch)


def adapt_optimizer(optimizer: keras.optimizers.Optimizer) -> None:
    """Make `optimizer` update under the active distribution as it does on one device.

    TensorFlow: its clipping moves after the all-reduce (`clip_after_all_reduce`),
    for a `kdl.optimizers.GroupedOptimizer` in each per-group optimizer and in its
    own `global_clipnorm`. Call it again on an optimizer restored from a
    checkpoint (a saved optimizer does not carry this). JAX needs nothing: its
    gradients are those of the global batch.
    """
    if keras.backend.backend() != "tensorflow":
        return
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    if hasattr(optimizer, "adapt_inner"):  # GroupedOptimizer: one optimizer per group
        optimizer.adapt_inner = clip_after_all_reduce
        for inner in optimizer.inner_optimizers:  # already built (a restored one)
            clip_after_all_reduce(inner)
        if not getattr(optimizer.clip_global_norm, "kdl_all_reduced", False):
            optimizer.clip_global_norm = _all_reduced(optimizer.clip_global_norm)
        return
    clip_after_all_reduce(optimizer)


def clip_after_all_reduce(optimizer: keras.optimizers.Optimizer) -> None:
    """TensorFlow: clip the summed gradient, not each replica's share of it.

    Keras 3.15's TensorFlow optimizer clips (`clipnorm`, `clipvalue`,
    `global_clipnorm`) in `apply`, before `_backend_update_step` all-reduces
    the replicas' gradients, so under `tf.distribute` each replica's partial
    gradient is clipped and the run differs from one device (measured: 1e-2
    after 20 steps). Here the gradients are all-reduced first, clipped, and
    handed on divided by the replica count, so the optimizer's own all-reduce
    sums them back to the clipped total: the one-device update, for one extra
    all-reduce. Private Keras API (`Optimizer._clip_gradients`), checked on
    Keras 3.15; tests/backend/test_distribution.py fails if it changes.
    """
    if keras.backend.backend() != "tensorflow" or not any(
            getattr(optimizer, k, None) for k in ("clipnorm", "clipvalue", "global_clipnorm")):
        return
    clip = keras_private.clip_gradients(optimizer)
    if not getattr(clip, "kdl_all_reduced", False):
        keras_private.set_clip_gradients(optimizer, _all_reduced(clip))


def _all_reduced(clip):
    """`clip` applied to the replicas' summed gradients; each replica gets its share back."""
    import tensorflow as tf

    def clip_global(grads):
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return clip(grads)
        present = [i for i, g in enumerate(grads) if g is not None]
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        clipped = clip(total)
        out = list(grads)
        for i, g in zip(present, clipped, strict=True):
            out[i] = g / ctx.num_replicas_in_sync
        return out

    clip_global.kdl_all_reduced = True
    return clip_global


def active() -> Distributed | None:
    """The distribution whose `scope()` is entered, if any."""
    return _ACTIVE


def _simulated_device_count() -> int:
    m = _SIMULATED.search(os.environ.get("XLA_FLAGS", ""))
    return int(m.group(1)) if m else 0


def _setup_tensorflow(d, count: int, index: int) -> Distributed:
    import tensorflow as tf

    simulated = _simulated_device_count()
    cpus = tf.config.list_physical_devices("CPU")
    if simulated > 1 and not tf.config.list_physical_devices("GPU"):
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * simulated)
        except RuntimeError:  # the runtime already started: its devices stay as they are
            pass
    if count > 1:
        _mean_logs_across_workers()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        local = strategy.extended.worker_devices
        replicas = strategy.num_replicas_in_sync
        if d.devices != "all" and d.devices != len(local):
            raise ValueError(f"train.distribution.devices={d.devices}, but a TensorFlow worker "
                             f"uses all its {len(local)} device(s): set devices=all")
        devices = [f"worker{i}:{n}" for i in range(count) for n in range(len(local))]
    else:
        gpus = tf.config.list_logical_devices("GPU")
        pool = [x.name for x in (gpus or tf.config.list_logical_devices("CPU"))]
        n = len(pool) if d.devices == "all" else d.devices
        if n > len(pool):
            raise ValueError(_too_few(n, len(pool)))
        strategy = tf.distribute.MirroredStrategy(devices=pool[:n])
        replicas, devices = n, pool[:n]
    return Distributed("data_parallel", devices, {next(iter(d.mesh), "batch"): replicas},
                       replicas, count, index, strategy)


def _mean_logs_across_workers() -> None:
    """Keras 3.15's TensorFlow trainer averages a step's logs over several workers with
    `strategy.reduce("MEAN", v, axis=0)`, which fails on the scalar logs of `fit`
    ("Invalid reduction dimension 0 for input with 0 dimensions"). Averaged with
    `axis=None` here, as one worker's several replicas are. Private Keras API
    (`keras.src.backend.tensorflow.trainer.reduce_per_replica`), checked on Keras 3.15;
    the two-process test in tests/pipelines/test_launch.py fails if it changes.
    """
    import tensorflow as tf

    trainer = keras_private.tensorflow_trainer_module()

    original = trainer.reduce_per_replica
    if getattr(original, "kdl_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(
                strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None),
                                         values)
        return original(values, strategy, reduction)

    reduce_per_replica.kdl_patched = True
    trainer.reduce_per_replica = reduce_per_replica


def _too_few(wanted: int, have: int) -> str:
    return (f"train.distribution.devices={wanted}, but this process sees {have} device(s); "
            "use devices=all, or on a CPU simulate more with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={wanted}")


def _setup_jax(d, coordinator: str | None, count: int, index: int) -> Distributed:
    import jax

    if count > 1 and not jax.distributed.is_initialized():
        if coordinator is None and "SLURM_NTASKS" in os.environ:
            jax.distributed.initialize()  # JAX finds SLURM's coordinator itself
        else:
            keras.distribution.initialize(coordinator, count, index)
    by_process: dict[int, list] = {}
    for dev in jax.devices():
        by_process.setdefault(dev.process_index, []).append(dev)
    local = by_process[jax.process_index()]
    n = len(local) if d.devices == "all" else d.devices
    if n > len(local):
        raise ValueError(_too_few(n, len(local)))
    chosen = [dev for p in sorted(by_process) for dev in by_process[p][:n]]
    names = [f"{dev.platform}:{dev.id}" for dev in chosen]
    mesh = dict(d.mesh) or {"batch": len(chosen)}
    if math.prod(mesh.values()) != len(chosen):
        raise ValueError(f"train.distribution.mesh {mesh} has {math.prod(mesh.values())} "
                         f"devices but {len(chosen)} are used ({n} per process x {count} "
                         "process(es)): make the mesh sizes multiply to that")
    device_mesh = keras.distribution.DeviceMesh(tuple(mesh.values()), list(mesh), names)
    if d.kind == "data_parallel":
        engine = keras.distribution.DataParallel(device_mesh=device_mesh)
    else:
        layout_map = keras.distribution.LayoutMap(device_mesh)
        for regex, axes in d.layout.items():
            layout_map[regex] = tuple(axes)
        engine = keras.distribution.ModelParallel(layout_map=layout_map,
                                                  batch_dim_name=next(iter(mesh)))
    return Distributed(d.kind, names, mesh, engine.num_model_replicas if hasattr(
        engine, "num_model_replicas") else len(chosen), jax.process_count(),
        jax.process_index(), engine, dict(d.layout))


def setup(d) -> Distributed:
    """Join the run's processes and build the engine for a `DistributionConfig`.

    Call it before anything else starts the backend's runtime (TensorFlow's
    multi-worker strategy and logical devices, `jax.distributed`). Raises
    `ValueError` naming the setting to change when the devices do not fit.
    """
    backend = keras.backend.backend()
    coordinator, count, index = process_env(d)
    if d.kind == "none":
        if count > 1:
            raise ValueError(f"{count} processes were started (process_id {index}) but "
                             "train.distribution.kind is none: set kind=data_parallel")
        return Distributed()
    if backend == "tensorflow":
        return _setup_tensorflow(d, count, index)
    return _setup_jax(d, coordinator, count, index)
