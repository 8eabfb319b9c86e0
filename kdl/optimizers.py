"""Per-group learning rates (discriminative fine-tuning) for any Keras optimizer.

Keras 3 optimizers have one learning rate for every variable. `GroupedOptimizer`
wraps one: at `build` it sorts the model's variables into groups (the first
regular expression that matches a variable's path, e.g. `"conv_0/kernel"`), and
gives each group its own copy of the optimizer at `lr_scale` times the rate (a
schedule is scaled at every step). `apply` hands each group its gradients. An
`lr_scale` of 0 freezes a group: it gets no optimizer and no state.

Scaling the gradients instead would be exact for plain SGD only: Adam's step is
invariant to the scale of the gradient, so there the rate must be scaled.

It works inside compiled `model.fit` on TensorFlow, JAX (the stateless path:
the inner optimizers' variables are part of `variables`) and PyTorch, and a
model compiled with it saves and loads with its optimizer state.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence

import keras

from kdl.backend import keras_private


@keras.saving.register_keras_serializable(package="kdl")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`scale * schedule(step)`.

    Args:
        schedule: a `LearningRateSchedule`.
        scale: the factor.
    """

    def __init__(self, schedule, scale: float):
        self.schedule = schedule
        self.scale = float(scale)

    def __call__(self, step):
        return self.schedule(step) * self.scale

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "scale": self.scale}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def _normalize_groups(groups) -> list[dict]:
    """`[{"match": regex, "lr_scale": float}, ...]` from a list or a `{regex: scale}` map."""
    if isinstance(groups, Mapping):
        groups = [{"match": k, "lr_scale": v} for k, v in groups.items()]
    out = []
    for i, g in enumerate(groups):
        if not isinstance(g, Mapping) or set(g) != {"match", "lr_scale"}:
            raise ValueError(f"param group {i}: expected {{'match': <regex>, 'lr_scale': "
                             f"<float>}}, got {g!r}")
        try:
            re.compile(g["match"])
        except re.error as e:
            raise ValueError(f"param group {i}: {g['match']!r} is not a regular "
                             f"expression: {e}") from e
        scale = float(g["lr_scale"])
        if scale < 0:
            raise ValueError(f"param group {i}: lr_scale must be >= 0 (0 freezes), got {scale}")
        out.append({"match": str(g["match"]), "lr_scale": scale})
    return out


def _path_tails(path: str) -> list[str]:
    """`"sequential/conv_0/kernel"` -> that, `"conv_0/kernel"` and `"kernel"`.

    A variable's path starts with the scopes it was created in, which depend on
    how the model was built: a `Sequential` model built in a process prefixes
    its name (`"sequential_3/conv_0/kernel"`), the same model loaded from a
    `.keras` file does not (`"conv_0/kernel"`). Matching every tail keeps a
    pattern like `"^conv_0/"` on the same variables either way, so a resumed
    run regroups its variables as the original did.
    """
    parts = path.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


@keras.saving.register_keras_serializable(package="kdl")
class GroupedOptimizer(keras.optimizers.Optimizer):
    """An optimizer with a learning rate per group of variables.

    Args:
        optimizer: the optimizer to copy for each group (its class and config:
            rate or schedule, clipping, weight decay, EMA, accumulation).
            `global_clipnorm` is applied over all gradients here, before the
            groups, so it stays global.
        groups: `[{"match": regex, "lr_scale": s}, ...]` or `{regex: s}`:
            the first pattern found (`re.search`) in a variable's `path`, or
            in a tail of it after a `/`, picks its group (so `"^conv_0/"`
            matches `"conv_0/kernel"` and `"sequential/conv_0/kernel"` alike);
            variables matching none keep scale 1. Scale 0 freezes. A group
            that matches no trainable variable is warned about at `build`.
        name: the optimizer's name.

    Example:

    ```python
    opt = GroupedOptimizer(keras.optimizers.Adam(1e-3),
                           [{"match": "^head/", "lr_scale": 1.0},
                            {"match": "^conv_", "lr_scale": 0.1}])
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy")
    ```
    """

    def __init__(self, optimizer, groups: Sequence[Mapping] | Mapping[str, float],
                 name: str | None = None, **kwargs):
        if isinstance(optimizer, str | dict):
            optimizer = keras.optimizers.get(optimizer)
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise ValueError(f"optimizer must be a keras optimizer, got {optimizer!r}")
        if isinstance(optimizer, GroupedOptimizer | keras.optimizers.LossScaleOptimizer):
            raise ValueError("GroupedOptimizer wraps a plain optimizer (Adam, SGD, ...), "
                             f"not a {type(optimizer).__name__}")
        template = optimizer.get_config()
        lr = template["learning_rate"]
        if isinstance(lr, dict):
            lr = keras.optimizers.schedules.deserialize(lr)
        elif not isinstance(lr, int | float):
            raise ValueError("GroupedOptimizer needs a float or a LearningRateSchedule "
                             f"learning rate, got {lr!r}")
        super().__init__(learning_rate=lr, name=name or f"grouped_{template['name']}",
                         **kwargs)
        self.optimizer = optimizer
        self.groups = _normalize_groups(groups)
        self._template = template
        self._global_clipnorm = template.get("global_clipnorm")
        self._inner: list = []  # one optimizer per non-frozen group, made in build
        self._scales: list[float] = []  # their learning-rate scales
        self._group_of: dict = {}  # variable key -> index into self._inner (None: frozen)
        # Called with each per-group optimizer when it is made (a distribution adapts
        # its clipping there: kdl.backend.distribution.adapt_optimizer).
        self.adapt_inner = None

    def _group_index(self, variable) -> int | None:
        keys = _path_tails(variable.path)
        for i, g in enumerate(self.groups):
            if any(re.search(g["match"], k) for k in keys):
                return i
        return None  # the default group, scale 1

    def _make(self, scale: float):
        config = {**self._template, "name": f"{self._template['name']}_x{scale:g}",
                  "global_clipnorm": None}
        lr = config["learning_rate"]
        if isinstance(lr, dict):
            lr = keras.optimizers.schedules.deserialize(lr)
            config["learning_rate"] = lr if scale == 1 else ScaledSchedule(lr, scale)
        else:
            config["learning_rate"] = lr * scale
        return type(self.optimizer).from_config(config)

    def build(self, variables):
        super().build(variables)
        by_scale: dict[int | None, list] = {}
        for v in variables:
            by_scale.setdefault(self._group_index(v), []).append(v)
        unmatched = [g["match"] for i, g in enumerate(self.groups) if i not in by_scale]
        if unmatched:
            warnings.warn(f"{self.name}: param group(s) {unmatched} match no trainable "
                          "variable; paths are e.g. "
                          f"{', '.join(repr(v.path) for v in variables[:3])}", stacklevel=2)
        inner, scales, group_of = [], [], {}
        for index in [*range(len(self.groups)), None]:
            members = by_scale.get(index)
            if not members:
                continue
            scale = 1.0 if index is None else self.groups[index]["lr_scale"]
            if scale == 0:
                for v in members:
                    group_of[self._var_key(v)] = None
                continue
            opt = self._make(scale)
            if self.adapt_inner is not None:
                self.adapt_inner(opt)
            opt.build(members)
            for v in members:
                group_of[self._var_key(v)] = len(inner)
            inner.append(opt)
            scales.append(scale)
        self._inner = inner
        self._scales = scales
        self._group_of = group_of
        self.built = True

    @property
    def variables(self):
        out = list(self._variables)
        for opt in self._inner:
            out.extend(opt.variables)
        return out

    @property
    def inner_optimizers(self) -> list:
        """The per-group optimizers (after `build`), in group order."""
        return list(self._inner)

    def group_scales(self) -> dict[str, float]:
        """Each variable's path and its learning-rate scale (after `build`)."""
        out = {}
        for v in self._trainable_variables:
            i = self._group_index(v)
            out[v.path] = 1.0 if i is None else self.groups[i]["lr_scale"]
        return out

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if trainable_variables is None:
            if not self.built:
                raise ValueError("call build(variables) or pass trainable_variables first")
            trainable_variables = self._trainable_variables
        else:
            trainable_variables = list(trainable_variables)
            if not self.built:
                self.build(trainable_variables)
        if self._global_clipnorm:
            grads = self.clip_global_norm(grads)
        per_group = [([], []) for _ in self._inner]
        for g, v in zip(grads, trainable_variables, strict=True):
            key = self._var_key(v)
            if key not in self._group_of:
                raise ValueError(f"variable {v.path} was not known when {self.name} was "
                                 "built; compile the model again after changing it")
            index = self._group_of[key]
            if index is not None and g is not None:
                per_group[index][0].append(g)
                per_group[index][1].append(v)
        for opt, (gs, vs) in zip(self._inner, per_group, strict=True):
            if gs:
                opt.apply(gs, vs)
        self._iterations.assign_add(1)

    def clip_global_norm(self, grads: list) -> list:
        """`grads` scaled so that their joint norm is at most `global_clipnorm`."""
        present = [g for g in grads if g is not None]
        norm = keras.ops.sqrt(sum(keras.ops.sum(keras.ops.square(g)) for g in present))
        factor = keras.ops.minimum(1.0, self._global_clipnorm / keras.ops.maximum(norm, 1e-12))
        return [g if g is None else g * keras.ops.cast(factor, g.dtype) for g in grads]

    @property
    def learning_rate(self):
        return self._get_current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value):
        # The base rate; each group follows at its scale (ReduceLROnPlateau, LR finder).
        keras.optimizers.Optimizer.learning_rate.fset(self, value)
        schedule = isinstance(value, keras.optimizers.schedules.LearningRateSchedule)
        for opt, scale in zip(getattr(self, "_inner", []), getattr(self, "_scales", []),
                              strict=True):
            if schedule:
                opt.learning_rate = value if scale == 1 else ScaledSchedule(value, scale)
            else:
                opt.learning_rate = value * scale

    def finalize_variable_values(self, var_list):
        for opt in self._inner:
            known = {keras_private.variable_key(opt, v)
                     for v in keras_private.optimizer_trainable_variables(opt)}
            opt.finalize_variable_values([v for v in var_list
                                          if keras_private.variable_key(opt, v) in known])

    def get_config(self):
        return {"name": self.name,
                "optimizer": keras.saving.serialize_keras_object(self.optimizer),
                "groups": [dict(g) for g in self.groups]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(config.pop("optimizer"),
                                                          custom_objects=custom_objects)
        return cls(optimizer, **config)
