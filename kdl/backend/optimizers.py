"""An optimizer made of named sub-optimizers, one per group of variables."""

from __future__ import annotations

import keras

from kdl.backend import keras_private


@keras.saving.register_keras_serializable(package="kdl")
class OptimizerGroup(keras.optimizers.Optimizer):
    """Several optimizers under one name, each owning one group of variables.

    Keras holds one `model.optimizer`; a GAN needs two (generator and
    discriminator). `OptimizerGroup` is that one optimizer: its `variables`
    are the sub-optimizers' variables, so the JAX trainer's stateless state
    carries all of them. A `kdl.backend.CustomTrainModel` builds each
    sub-optimizer on its group (`build_groups`) and applies them one at a time.

    Args:
        optimizers: dict `group name -> keras.optimizers.Optimizer`.
        name: optimizer name.

    Example:

    ```python
    opt = OptimizerGroup({"discriminator": keras.optimizers.Adam(2e-4),
                          "generator": keras.optimizers.Adam(2e-4)})
    ```
    """

    def __init__(self, optimizers, name="optimizer_group", **kwargs):
        if not optimizers:
            raise ValueError("OptimizerGroup needs at least one optimizer")
        for key, opt in optimizers.items():
            if not isinstance(opt, keras.optimizers.Optimizer):
                raise TypeError(f"optimizer {key!r} must be a keras optimizer, got {opt!r}")
        super().__init__(learning_rate=0.0, name=name)
        self.group_names = list(optimizers)
        self._optimizers = [optimizers[k] for k in self.group_names]

    def __getitem__(self, group: str) -> keras.optimizers.Optimizer:
        if group not in self.group_names:
            raise KeyError(f"no optimizer for group {group!r}; groups: {self.group_names}")
        return self._optimizers[self.group_names.index(group)]

    def build_groups(self, groups: dict) -> None:
        """Build each sub-optimizer on its variables: `groups[name] -> list[Variable]`."""
        missing = set(self.group_names) - set(groups)
        if missing:
            raise ValueError(f"no variables given for optimizer groups {sorted(missing)}")
        for key in self.group_names:
            opt = self[key]
            if not opt.built:
                opt.build(list(groups[key]))
        super().build([])

    def build(self, var_list):
        if not all(opt.built for opt in self._optimizers):
            raise ValueError(
                "OptimizerGroup is built per group: call build_groups({name: variables}) "
                "(CustomTrainModel.compile does it for you)"
            )
        super().build([])

    @property
    def variables(self):
        return [v for opt in self._optimizers for v in opt.variables]

    @property
    def iterations(self):
        return self._optimizers[0].iterations

    @property
    def learning_rate(self):
        return self._optimizers[0].learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        for opt in getattr(self, "_optimizers", []):
            opt.learning_rate = value

    def apply(self, grads, trainable_variables=None):
        raise NotImplementedError("apply each group's optimizer: group[name].apply(...)")

    def finalize_variable_values(self, var_list):
        for opt in self._optimizers:
            opt.finalize_variable_values(keras_private.optimizer_trainable_variables(opt))

    def save_own_variables(self, store):
        for i, v in enumerate(self.variables):
            store[str(i)] = v.numpy()

    def load_own_variables(self, store):
        for i, v in enumerate(self.variables):
            v.assign(store[str(i)])

    def get_config(self):
        return {
            "name": self.name,
            "optimizers": {k: keras.saving.serialize_keras_object(self[k])
                           for k in self.group_names},
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        opts = {k: keras.saving.deserialize_keras_object(v, custom_objects=custom_objects)
                for k, v in config.pop("optimizers").items()}
        return cls(opts, **config)
