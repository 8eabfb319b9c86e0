"""The custom-train-step API gives the same SGD steps on every backend."""

import keras
import numpy as np
import pytest

from kdl.backend import CustomTrainModel, OptimizerGroup


@keras.saving.register_keras_serializable(package="kdl_test")
class TwoGroups(CustomTrainModel):
    """Group "a" pulls a to 1; group "b" pulls b to the (already updated) a."""

    log_names = ("loss_a", "loss_b")

    def __init__(self, groups=2, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups
        self.a = self.add_weight(shape=(), initializer="zeros", name="a")
        self.b = self.add_weight(shape=(), initializer=keras.initializers.Constant(3.0),
                                 name="b")
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     name="calls")

    def call(self, x):
        return x * self.a + self.b

    def optimizer_groups(self):
        if self.groups == 1:
            return {"loss": [self.a, self.b]}
        return {"a": [self.a], "b": [self.b]}

    def group_loss(self, group, data):
        self.calls.assign_add(1.0)
        x = keras.ops.mean(data)  # zeros: keeps the loss a function of the batch
        loss_a = (self.a - 1.0 + x) ** 2
        loss_b = (self.b - self.a) ** 2
        loss = {"a": loss_a, "b": loss_b, "loss": loss_a + loss_b}[group]
        return loss, {"loss_a": loss_a, "loss_b": loss_b}

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


def _fit(model, steps):
    model.fit(np.zeros((4 * steps, 1), "float32"), batch_size=4, epochs=1, verbose=0)
    return float(model.a.numpy()), float(model.b.numpy()), float(model.calls.numpy())


def test_two_groups_step_in_order_with_own_optimizers():
    model = TwoGroups()
    model.compile({"a": keras.optimizers.SGD(0.1), "b": keras.optimizers.SGD(0.5)})
    assert isinstance(model.optimizer, OptimizerGroup)
    a, b, calls = _fit(model, 2)
    # NumPy oracle: a -= 0.1 * 2 (a - 1); then b -= 0.5 * 2 (b - a_new) -> b = a_new.
    ea, eb = 0.0, 3.0
    for _ in range(2):
        ea -= 0.1 * 2 * (ea - 1.0)
        eb -= 0.5 * 2 * (eb - ea)
    np.testing.assert_allclose([a, b], [ea, eb], rtol=1e-5)
    assert calls == 4  # the non-trainable update of each group's loss is kept


def test_one_group_one_optimizer_and_tracked_logs():
    model = TwoGroups(groups=1)
    model.compile(keras.optimizers.SGD(0.1))
    history = model.fit(np.zeros((4, 1), "float32"), batch_size=4, epochs=1, verbose=0)
    a, b = float(model.a.numpy()), float(model.b.numpy())
    # joint gradient of (a-1)^2 + (b-a)^2 at a=0, b=3: da = -2 - 6 = -8, db = 6
    np.testing.assert_allclose([a, b], [0.8, 2.4], rtol=1e-5)
    np.testing.assert_allclose(history.history["loss_a"][0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(history.history["loss_b"][0], 9.0, rtol=1e-5)


def test_compile_rejects_a_loss_and_a_dict_for_one_group():
    with pytest.raises(ValueError, match="optimizer only"):
        TwoGroups().compile("sgd", loss="mse")
    with pytest.raises(ValueError, match="one optimizer group"):
        TwoGroups(groups=1).compile({"loss": "sgd"})


def test_fit_without_compile_says_so():
    with pytest.raises(ValueError, match="compile"):
        TwoGroups().train_groups()


def test_evaluate_and_validation_report_losses_without_updates():
    model = TwoGroups()
    model.compile({"a": keras.optimizers.SGD(0.1), "b": keras.optimizers.SGD(0.5)})
    x = np.zeros((4, 1), "float32")
    logs = model.evaluate(x, batch_size=4, verbose=0, return_dict=True)
    np.testing.assert_allclose([logs["loss_a"], logs["loss_b"]], [1.0, 9.0], rtol=1e-5)
    assert float(model.a.numpy()) == 0.0 and float(model.calls.numpy()) == 0.0
    hist = model.fit(x, validation_data=(x,), batch_size=4, epochs=1, verbose=0)
    assert "val_loss_a" in hist.history
