"""`python -m pipelines ...`: parse, build the config, call one function.

Exit codes: 0 success; 1 a stage ran and failed (diverged, missed a
threshold); 2 bad input (unknown recipe or key, wrong type, missing file),
reported in one line without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib.util
import os
import signal
import sys
from pathlib import Path

# TensorFlow's C++ start-up lines (CUDA look-ups, oneDNN and CPU-feature notices) are
# hidden unless --verbose: a one-line error is then the only thing on stderr.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines",
                                description="Train, compress, export and verify kdl models.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe's stages")
    run.add_argument("recipe", nargs="?",
                     help="a recipe name (see `list`) or a path to a .yaml file")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=3")
    run.add_argument("--stages", help="comma-separated stages to run (default: the recipe's)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue an interrupted run from its latest checkpoint")
    run.add_argument("--sanity", action="store_true",
                     help="first overfit one batch; stop (exit 1) if the loss stays high")
    lrf = sub.add_parser("lr-find", help="learning-rate range test: sweep, plot, suggestion")
    lrf.add_argument("recipe")
    lrf.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a config value")
    lrf.add_argument("--min-lr", type=float, default=1e-6)
    lrf.add_argument("--max-lr", type=float, default=1.0)
    lrf.add_argument("--steps", type=int, default=100)
    lau = sub.add_parser("launch", help="train one run with N local processes (multi-process "
                         "distribution on 127.0.0.1; docs/scale.md)")
    lau.add_argument("recipe", nargs="?")
    lau.add_argument("--processes", type=int, required=True, metavar="N")
    lau.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue an interrupted run from its latest checkpoint, on N "
                          "processes (JAX data parallel)")
    lau.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a config value (every process)")
    lau.add_argument("--stages", help="comma-separated stages to run (default: the recipe's)")
    srv = sub.add_parser("tracking-server", help="a team's MLflow server: PostgreSQL store, "
                         "proxied artifacts, on 127.0.0.1 (docs/scale.md); Ctrl-C stops it")
    srv.add_argument("--dir", type=Path, default=Path(".tracking-server"),
                     help="PostgreSQL data, artifacts and logs (default .tracking-server/)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=5000)
    tun = sub.add_parser("tune", help="Optuna search over the recipe's tune.space")
    tun.add_argument("recipe")
    tun.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a config value, e.g. tune.trials=8")
    tun.add_argument("--workers", type=int, default=0, metavar="N",
                     help="run the trials in N local processes sharing the study "
                     "(tune.storage, e.g. postgresql://...)")
    tun.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("list", help="list recipes, models, datasets, schedules and formats")
    export = sub.add_parser("export", help="export and verify an earlier run directory")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override the run's config, e.g. "
                        "export.formats=[tflite_fp32,tflite_int8]")
    bench = sub.add_parser("bench", help="benchmark the exported files of an earlier run "
                           "directory (latency, throughput, size, memory)")
    bench.add_argument("run_dir", type=Path)
    bench.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override the run's config, e.g. "
                       "bench.threads=[1,4] bench.budget_s=2")
    evaluate = sub.add_parser("evaluate", help="evaluate an earlier run directory: per-class "
                              "metrics of the Keras model and its exported files, calibration, "
                              "explanations, robustness, fairness (evaluation/report.md)")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--set", dest="overrides", action="append", default=[],
                          metavar="KEY=VALUE", help="override the run's config, e.g. "
                          "evaluate.robustness_examples=500 evaluate.sensitive=group")
    verify = sub.add_parser("verify-bundle", help="replay a mobile bundle's golden vectors "
                            "(numpy + ai-edge-litert only; exit 0 pass, 1 mismatch, 2 malformed)")
    verify.add_argument("bundle_dir", type=Path)
    verify.add_argument("--threads", type=int, default=1, help="LiteRT CPU threads")
    sub.add_parser("predict", add_help=False,
                   help="top-k predictions of a bundle on your inputs (image files or folders; "
                   "numpy + ai-edge-litert + Pillow only): predict <bundle or run dir> "
                   "<inputs...> [--top-k K] [--json]")
    sub.add_parser("config", help="print the default config as YAML")
    cart = sub.add_parser("cartpole", help="train a DQN on CartPole and evaluate it over 100 "
                          "episodes (bar: mean return >= 195; exit 1 below it)")
    cart.add_argument("--steps", type=int, default=50_000, help="environment steps at most")
    cart.add_argument("--seed", type=int, default=0)
    cart.add_argument("--episodes", type=int, default=100, help="evaluation episodes")
    cart.add_argument("--out", type=Path, default=Path("saved_models/dqn_cartpole"))
    return p


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def missing_extra(module: str, extra: str, what: str, alternative: str = "") -> str | None:
    """The one-line message when `what` needs `module` (from `pip install 'kdl[extra]'`)
    and it is not importable; None when it is. Looked up, not imported (no start-up cost)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install or a blocked import
        found = False
    if found:
        return None
    return (f"{what} needs {module}, which is not installed: pip install 'kdl[{extra}]'"
            + (f" (or {alternative})" if alternative else ""))


def _tracking_missing(cfg) -> str | None:
    if not cfg.tracking.enabled:
        return None
    return missing_extra("mlflow", "tracking", "tracking (tracking.enabled)",
                         "--set tracking.enabled=false")


def cmd_list() -> int:
    from kdl.export import FORMATS
    from kdl.registry import DATASETS, MODELS, SCHEDULES
    from pipelines.config import available_recipes

    print("recipes:  " + ", ".join(available_recipes()))
    for title, registry in (("models", MODELS), ("datasets", DATASETS),
                            ("schedules", SCHEDULES)):
        print(f"{title}:")
        for entry in registry:
            extra = (f" [presets: {', '.join(sorted(entry.presets))}]" if entry.presets else "")
            print(f"  {entry.name:<16} {entry.doc}{extra}")
    print("export formats:")
    for f in FORMATS.values():
        print(f"  {f.name:<16} {f.filename:<22} {f.description}")
    return 0


def cmd_run(args) -> int:
    from pipelines import toolkit
    from pipelines.config import check_stages, load_config, validate
    from pipelines.run import continue_run, reopen, run_pipeline

    stages = args.stages.split(",") if args.stages else None
    if args.resume is not None:
        if args.recipe or args.overrides:
            return _error("--resume takes the run directory, not a recipe or --set "
                          "(the run's config is reused)")
        if stages:
            check_stages(stages)
        if message := _tracking_missing(reopen(args.resume)[0]):
            return _error(message)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        run_dir, results, tracker = continue_run(args.resume, stages, resume=True)
        return _report(results, run_dir, tracker)
    if not args.recipe:
        return _error("give a recipe (or --resume RUN_DIR)")
    cfg = load_config(args.recipe, args.overrides)
    if args.sanity and not toolkit.sanity(cfg):
        print("\nFAILED: sanity check (overfit one batch); not training", file=sys.stderr)
        return 1
    if stages:  # the recipe's rules, before any work; config.yaml records them (--resume)
        cfg = dataclasses.replace(cfg, stages=stages)
        validate(cfg)
    if message := _tracking_missing(cfg):  # before any run directory or MLflow run
        return _error(message)
    from kdl.backend.distribution import setup

    try:  # joins the other processes of a distributed run; before any other device use
        dist = setup(cfg.train.distribution)
    except ValueError as e:
        return _error(str(e))
    # a launcher (or scheduler) stops this process with SIGTERM: end the MLflow run FAILED
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    run_dir, results, tracker = run_pipeline(cfg, dist=dist)
    return _report(results, run_dir, tracker)


def _report(results: dict, run_dir, tracker) -> int:
    """The summary table; process k > 0 of a distributed run says what it did instead."""
    from pipelines.run import summary_table

    train = results.get("train", {})
    if "process_id" in train:
        print(f"process {train['process_id']}: trained {train.get('epochs')} epoch(s); "
              "process 0 writes the run")
        return 0
    print()
    print(summary_table(run_dir, results, tracker))
    return 0


def cmd_export(args) -> int:
    """`export|bench|evaluate RUN_DIR`: that one stage again in an earlier run."""
    from pipelines.run import continue_run, reopen, summary_table

    if message := _tracking_missing(reopen(args.run_dir, args.overrides)[0]):
        return _error(message)  # before stale files go or an MLflow run starts
    run_dir, results, tracker = continue_run(args.run_dir, [args.command], args.overrides)
    print(summary_table(run_dir, results, tracker))
    return 0


def main(argv: list[str] | None = None) -> int:
    command_line = argv is None  # the real CLI (not main([...]) inside another program)
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" in argv:  # TensorFlow's and absl's own logging back on
        argv.remove("--verbose")
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    elif command_line:
        _quiet()
    if argv[:1] == ["predict"]:  # its own parser, before any kdl import (no Keras, no TF)
        from pipelines.predict import main as predict_main

        return predict_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "launch" and args.processes < 1:  # before any import starts a backend
        return _error(f"--processes must be >= 1 (got {args.processes})")
    if args.command == "tune" and args.workers < 0:
        return _error(f"--workers must be >= 0 (got {args.workers})")
    if args.command == "verify-bundle":  # before any kdl import: no Keras, no TensorFlow
        from pipelines.verify_bundle import main as verify_main

        return verify_main([str(args.bundle_dir), "--threads", str(args.threads)])
    if args.command in ("export", "bench", "evaluate") and not (
            args.run_dir / "config.yaml").is_file():  # before Keras and TensorFlow start
        return _error(f"{args.run_dir.resolve()} is not a kdl run directory (no config.yaml); "
                      "RUN= takes a directory under saved_models/<experiment>/")
    from kdl.config import ConfigError
    from kdl.data import DataError
    from kdl.export.litert import ExportFileError
    from kdl.registry import UnknownNameError
    from pipelines.run import StageFailed

    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "config":
            import yaml

            from pipelines.config import ExperimentConfig, to_dict

            print(yaml.safe_dump(to_dict(ExperimentConfig()), sort_keys=False))
            return 0
        if args.command == "cartpole":
            from pipelines.cartpole import run_cartpole

            if args.steps < 1 or args.episodes < 1:
                return _error(f"--steps ({args.steps}) and --episodes ({args.episodes}) "
                              "must be >= 1")

            if message := missing_extra("gymnasium", "rl", "cartpole"):
                return _error(message)
            result = run_cartpole(args.out, steps=args.steps, seed=args.seed,
                                  episodes=args.episodes)
            return 0 if result["solved"] else 1
        if args.command in ("export", "bench", "evaluate"):
            return cmd_export(args)
        if args.command == "tune":
            from pipelines.config import load_config
            from pipelines.tune import tune

            cfg = load_config(args.recipe, args.overrides)
            if message := (missing_extra("optuna", "tune", "tune")
                           or _tracking_missing(cfg)):
                return _error(message)
            tune(cfg, workers=args.workers,
                 worker=args.worker, recipe=args.recipe, overrides=args.overrides)
            return 0
        if args.command == "tracking-server":
            from pipelines.tracking_server import ServerError, serve

            try:
                return serve(args.dir, args.host, args.port)
            except ServerError as e:
                return _error(str(e))
        if args.command == "launch":
            from kdl.backend.distribution import check_config, resume_refusal
            from pipelines.config import load_config
            from pipelines.launch import launch

            if bool(args.recipe) == bool(args.resume) or (args.resume and args.overrides):
                return _error("launch takes a recipe (with --set), or --resume RUN_DIR alone "
                              "(the run's config is reused)")
            if args.resume:  # bad input: one line, before any process starts
                from pipelines import toolkit
                from pipelines.run import Context, reopen

                cfg, run_dir, _ = reopen(args.resume)
                toolkit.checkpoint_dir(Context(cfg, run_dir, None, state={"resume": True}))
            else:
                cfg = load_config(args.recipe, args.overrides)
            if message := (_tracking_missing(cfg) or check_config(
                    cfg.train.distribution, cfg.data.batch_size, processes=args.processes) or (
                    cfg.train.checkpoint and resume_refusal(cfg.train.distribution,
                                                            args.processes))):
                return _error(message)
            return launch(args.recipe, args.overrides, args.processes, args.stages,
                          resume=args.resume)
        if args.command == "lr-find":
            from pipelines import toolkit
            from pipelines.config import load_config

            toolkit.lr_find(load_config(args.recipe, args.overrides), min_lr=args.min_lr,
                            max_lr=args.max_lr, num_steps=args.steps)
            return 0
        return cmd_run(args)
    except (ConfigError, DataError, ExportFileError, UnknownNameError, FileNotFoundError) as e:
        return _error(str(e))
    except StageFailed as e:
        print(f"\nFAILED: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in OS_ERRORS:
            raise
        return _error(os_error_message(e))


# Errors of the machine, not of kdl: one line, exit 2 (docs/errors.md).
OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}


def os_error_message(e: OSError) -> str:
    """"no space left" (which path, how much is free) / "permission denied" (which path)."""
    import shutil

    path = e.filename or getattr(e, "kdl_path", None)
    where = f" writing {path}" if path else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = ""
        probe = Path(path) if path else Path.cwd()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = f" ({shutil.disk_usage(probe).free:,} bytes free on {probe})"
        except OSError:
            pass
        what = "file size limit reached" if e.errno == errno.EFBIG else "no space left on device"
        return f"{what}{where}{free}: free space or set output_dir=<a larger disk>"
    what = "read-only file system" if e.errno == errno.EROFS else "permission denied"
    return f"{what}{where}: make it writable or set output_dir=<a writable directory>"


def _quiet() -> None:
    """Native libraries' stderr (absl/XLA/TensorFlow C++ lines written before their logging
    starts, which TF_CPP_MIN_LOG_LEVEL does not reach) goes to a scratch file, while
    Python's `sys.stderr` (our errors, warnings, tracebacks) keeps the real stderr; the
    absl/TensorFlow/MLflow Python loggers go to ERROR/WARNING. `--verbose` keeps it all."""
    import logging
    import tempfile

    if not hasattr(sys.stderr, "fileno"):
        return
    try:
        fd = sys.stderr.fileno()
        sys.stderr.flush()
        real = os.dup(fd)
    except (OSError, ValueError):  # not a real file (pytest capture, IDE console)
        return
    scratch = tempfile.TemporaryFile(prefix="kdl-native-stderr-")
    os.dup2(scratch.fileno(), fd)
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=sys.stderr.encoding,
                           errors="backslashreplace")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its store-migration notices
    for name in ("absl", "tensorflow", "h5py", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
