"""Custom train steps: the per-backend part of training models by their own losses.

Models trained by their own losses (GAN, VAE, SimCLR, CLIP, DDPM, DQN)
subclass `CustomTrainModel` and write their losses with `keras.ops` only.
This package supplies the backend part: computing gradients of each loss
(`tf.GradientTape`, `torch.autograd.grad`, `jax.value_and_grad` in a stateless
scope) and applying the group's optimizer. `model.fit` then works unchanged on
TensorFlow, JAX and PyTorch.
"""

from __future__ import annotations

import keras

from kdl.backend.optimizers import OptimizerGroup

BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    from kdl.backend._tensorflow import test_step as _test_step
    from kdl.backend._tensorflow import train_step as _train_step
elif BACKEND == "jax":
    from kdl.backend._jax import test_step as _test_step
    from kdl.backend._jax import train_step as _train_step
elif BACKEND == "torch":
    from kdl.backend._torch import test_step as _test_step
    from kdl.backend._torch import train_step as _train_step
else:  # pragma: no cover
    raise ImportError(f"kdl supports the tensorflow, jax and torch backends, not {BACKEND!r}")


class CustomTrainModel(keras.Model):
    """A `keras.Model` whose `fit` minimizes its own loss(es), on any backend.

    Subclasses implement `group_loss(group, data) -> (loss, logs)` with
    `keras.ops` only, where `logs` is a dict of scalars named in the class
    attribute `log_names` (each averaged over the epoch by a `Mean` tracker).
    For several optimizers (a GAN), override `optimizer_groups()` to map each
    group name to its variables; each train step then runs the groups in that
    order, one gradient step each, and later groups see earlier updates.

    `compile(optimizer)` takes one optimizer, or a dict `group -> optimizer`
    (an optimizer or its name) when there are several groups. A single
    optimizer given to several groups is cloned per group.

    Example:

    ```python
    class Quadratic(CustomTrainModel):
        log_names = ("loss",)

        def group_loss(self, group, data):
            loss = keras.ops.mean((self(data) - 1.0) ** 2)
            return loss, {"loss": loss}
    ```
    """

    log_names: tuple[str, ...] = ("loss",)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loss_trackers = [keras.metrics.Mean(name=n) for n in self.log_names]

    # -- what subclasses define ------------------------------------------------
    def optimizer_groups(self) -> dict[str, list]:
        """Group name -> trainable variables, in update order. One group by default."""
        return {"loss": self.trainable_variables}

    def group_loss(self, group: str, data):
        """The loss of `group` on one batch `data`, and a dict of logs."""
        raise NotImplementedError(f"{type(self).__name__} must implement group_loss")

    # -- machinery ---------------------------------------------------------------
    def compile(self, optimizer="adam", **kwargs):
        if kwargs.get("loss") is not None:
            raise ValueError(f"{type(self).__name__} computes its own loss; compile it "
                             "with an optimizer only")
        groups = self.optimizer_groups()
        if len(groups) > 1:
            if isinstance(optimizer, dict):
                opts = {k: keras.optimizers.get(v) for k, v in optimizer.items()}
            else:
                base = keras.optimizers.get(optimizer)
                opts = {k: base.__class__.from_config(base.get_config()) for k in groups}
            optimizer = OptimizerGroup(opts)
        elif isinstance(optimizer, dict):
            raise ValueError(f"{type(self).__name__} has one optimizer group; pass one "
                             "optimizer, not a dict")
        super().compile(optimizer=optimizer, **kwargs)
        if isinstance(self.optimizer, OptimizerGroup):
            self.optimizer.build_groups(groups)

    def get_compile_config(self):
        # compile() is custom: a reloaded model is compiled again by its user.
        return {}

    def train_groups(self, need_optimizer=True):
        """`(group, variables, optimizer)` for each group, in update order."""
        groups = self.optimizer_groups()
        opt = getattr(self, "optimizer", None)
        if opt is None and not need_optimizer:
            return [(g, list(vs), None) for g, vs in groups.items()]
        if opt is None:
            raise ValueError(f"compile {type(self).__name__} with an optimizer before fit")
        return [(g, list(vs), opt[g] if isinstance(opt, OptimizerGroup) else opt)
                for g, vs in groups.items()]

    def update_trackers(self, logs: dict) -> None:
        for tracker in self.loss_trackers:
            if tracker.name in logs:
                tracker.update_state(logs[tracker.name])

    def tracker_results(self) -> dict:
        return {t.name: t.result() for t in self.loss_trackers}

    def train_step(self, *args):
        return _train_step(self, *args)

    def test_step(self, *args):
        # the training losses on a batch, no updates (`evaluate`, `validation_data`)
        return _test_step(self, *args)

