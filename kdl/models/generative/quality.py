"""A quality figure for generated images: how sure a classifier of the real data is."""

from __future__ import annotations

import numpy as np


def classifier_confidence(images: np.ndarray, train_x: np.ndarray, train_y: np.ndarray,
                          seed: int = 0) -> dict[str, float]:
    """Mean top-class probability of a classifier of the real data, on `images` and on noise.

    A logistic regression is fitted on the flattened real training images
    (`train_x`, `train_y`, in the space the generator was trained in); it is
    asked about the generated `images` and about as many noise images (each
    pixel Gaussian with that pixel's mean and standard deviation in the real
    data: the right scale, no structure), the reference a generator must beat.
    Samples that look like the data's classes get confident answers; noise
    gets less.

    Returns:
        `{"sample_confidence": ..., "noise_confidence": ...}`.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    images = np.asarray(images, "float32")
    if images.shape[1:] != train_x.shape[1:]:
        raise ValueError(f"samples of shape {images.shape[1:]} do not match the data's "
                         f"{train_x.shape[1:]}")
    # one BLAS thread: on a busy CPU the threaded solver is 50x slower on so small a problem;
    # 300 iterations: enough for a yardstick, and quick
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=300).fit(train_x.reshape(len(train_x), -1), train_y)
    # noise with each pixel's mean and spread in the real data: no structure, same scale
    mean, std = train_x.mean(0), train_x.std(0)
    noise = (mean + std * np.random.default_rng(seed).normal(size=images.shape))
    noise = noise.astype("float32")

    def confidence(x):
        return float(clf.predict_proba(x.reshape(len(x), -1)).max(1).mean())

    return {"sample_confidence": confidence(images), "noise_confidence": confidence(noise)}
