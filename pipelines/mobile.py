"""The export stage's last step: the mobile bundle, its verification, the registry.

After every exported file passed parity, `write_and_verify_bundle` writes
`<run>/bundle/` (the chosen `.tflite` files, `contract.json`, `golden.json`),
replays it with the standalone checker (`pipelines/verify_bundle.py`: numpy and
ai-edge-litert only), and only then moves it into place. `register_candidate`
logs the bundle to MLflow, registers it as a model version with the run's
lineage in its tags, and points the alias `candidate` at it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from kdl.export.bundle import replace_dir, write_bundle
from kdl.export.formats import FORMATS
from pipelines.tracking import run_label

CANDIDATE_ALIAS = "candidate"


class BundleVerificationError(RuntimeError):
    """The bundle's golden vectors did not replay (or the bundle is malformed)."""


def bundle_formats(cfg, report: dict[str, Any]) -> list[str]:
    """The `.tflite` formats that go into the bundle (config, else every exported one)."""
    exported = [f for f in report["formats"] if FORMATS[f].is_tflite]
    return [f for f in (cfg.export.bundle or exported) if f in exported]


def text_golden(splits, n: int, predict) -> dict[str, Any]:
    """Golden strings of a text model: `n` test texts and `HARD_STRINGS`, their ids from
    the KerasHub tokenizer (as in training), the Keras model's outputs on those ids."""
    from kdl.data.tokenizers import HARD_STRINGS, tokenize, tokenizer_from_spec

    strings = [str(t) for t in splits.test.text[:n]] + HARD_STRINGS
    ids = tokenize(tokenizer_from_spec(splits.info["tokenizer"]), strings)
    return {"strings": strings, "ids": ids, "reference": predict(ids)}


def write_and_verify_bundle(ctx, splits, reference: np.ndarray,
                            report: dict[str, Any], text: dict[str, Any] | None = None
                            ) -> dict[str, Any]:
    """Writes `<run_dir>/bundle/` and proves it with the standalone checker.

    Text models pass `text` (`text_golden`): the golden examples are strings and
    the bundle carries the tokenizer.

    Returns:
        A summary (`bundle_dir`, `bundle_files`, `golden_examples`), empty if
        no `.tflite` format was exported.

    Raises:
        BundleVerificationError: with the checker's report; no bundle is left.
    """
    from pipelines.verify_bundle import verify_bundle

    cfg, run_dir, tracker = ctx.cfg, ctx.run_dir, ctx.tracker
    formats = bundle_formats(cfg, report)
    if not formats:
        return {}
    export_dir = run_dir / "export"
    n = min(cfg.export.golden_examples, len(splits.test))
    norm = splits.normalizer
    if text is not None:
        raw, norm, reference, n = text["ids"], None, text["reference"], len(text["ids"])
        image, golden_images = None, ()
    else:
        raw = (splits.test.x[:n] * norm.std + norm.mean).astype("float32")  # as the app gets it
        image, golden_images = image_preprocessing(cfg, splits, n)
        if image is not None:
            raw = np.round(raw)  # 8-bit pixel values at the model's size
    unverified = run_dir / ".bundle.unverified"
    write_bundle(
        unverified, {f: export_dir / report["formats"][f]["file"] for f in formats}, raw,
        normalization=norm, label_names=splits.label_names, task=splits.task,
        model_name=cfg.name, model_version=run_dir.name, source_run=run_label(run_dir),
        reference_outputs=reference[:n],
        text=text["strings"] if text else None,
        tokenizer=splits.info["tokenizer"] if text else None,
        metadata={"mlflow_run_id": tracker.parent_id, "experiment": tracker.experiment,
                  "data_fingerprint": splits.fingerprint},
        image=image, golden_images=golden_images,
    )
    code, lines = verify_bundle(unverified)
    if code != 0:
        shutil.rmtree(unverified, ignore_errors=True)
        raise BundleVerificationError("the mobile bundle does not verify:\n  "
                                      + "\n  ".join(lines))
    bundle_dir = run_dir / "bundle"
    replace_dir(unverified, bundle_dir)
    print("verify-bundle: " + "; ".join(lines))
    return {"bundle_dir": bundle_dir, "bundle_files": len(formats), "golden_examples": n}


GOLDEN_IMAGE_MAX_VALUES = 1_000_000  # decoded golden images larger than this stay out


def image_preprocessing(cfg, splits, n: int):
    """Image datasets: the contract's `preprocessing.image` block and the decoded pixels of
    the first `n` test images (None, () for other data)."""
    if "preprocessing" not in splits.info or not hasattr(splits.test, "paths"):
        return None, ()
    from kdl.data.images import raw_pixels
    from kdl.models.mobile import INPUT_RANGE

    image = {**splits.info["preprocessing"], "model_input": INPUT_RANGE.get(
        cfg.model.name, "float32 pixels in [0, 255], then preprocessing.normalization")}
    pixels = [raw_pixels(p, splits.test.spec) for p in splits.test.paths[:n]]
    if sum(p.size for p in pixels) > GOLDEN_IMAGE_MAX_VALUES:
        print(f"bundle: the {n} decoded golden images hold over {GOLDEN_IMAGE_MAX_VALUES} "
              "values; golden.json carries the resized pixels only")
        pixels = []
    return image, pixels


def register_candidate(tracker, cfg, run_dir: Path, bundle_dir: Path,
                       formats: list[str]) -> str | None:
    """Logs the bundle, registers it as a model version, sets alias `candidate`.

    The registration keeps the registry consistent through a kill at any point
    (`Tracker.register_bundle`: create `pending`, move the alias forward, tag `passed`).

    Returns:
        The registered version ("<name> v<N>"), or None when tracking or
        registration is off or failed (the tracker warns once; files stay).
    """
    tracker.log_artifact(bundle_dir, "bundle")
    if not (cfg.tracking.register_model and tracker.enabled and tracker.run_id):
        return None
    name = cfg.tracking.model_name or f"kdl-{tracker.experiment}"
    tags = {"source_run": tracker.parent_id or "", "export_run": tracker.run_id,
            "run_dir": run_label(run_dir), "formats": ",".join(formats)}
    return tracker.register_bundle(name, "bundle", tags, alias=CANDIDATE_ALIAS,
                                   kind="mobile-bundle")
