"""Custom train step, JAX: stateless, `jax.value_and_grad` per variable group.

The JAX trainer hands `train_step` the values of every variable (trainable,
non-trainable, optimizer, metrics) and expects the new values back. Each group's
loss runs in a `keras.StatelessScope` over the current values, so updates made
by earlier groups (a GAN's discriminator step) are seen by later ones.
"""

import jax
import keras


def train_step(model, state, data):
    trainable, non_trainable, optimizer_values, metrics_values = state
    tv, ntv = model.trainable_variables, model.non_trainable_variables
    values = {id(v): x for v, x in zip(tv, trainable, strict=True)}
    values.update({id(v): x for v, x in zip(ntv, non_trainable, strict=True)})
    opt_all = model.optimizer.variables
    values.update({id(v): x for v, x in zip(opt_all, optimizer_values, strict=True)})
    values.update({id(v): x for v, x in zip(model.metrics_variables, metrics_values, strict=True)})
    model_vars = list(tv) + list(ntv)

    for group, variables, optimizer in model.train_groups():
        ids = [id(v) for v in variables]

        def loss_fn(group_values, group=group, ids=ids):
            current = dict(values)
            current.update(zip(ids, group_values, strict=True))
            mapping = [(v, current[id(v)]) for v in model_vars]
            with keras.StatelessScope(state_mapping=mapping) as scope:
                loss, logs = model.group_loss(group, data)
            updated = [scope.get_current_value(v) for v in ntv]
            return loss, (logs, updated)

        (_, (logs, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            [values[i] for i in ids])
        for v, x in zip(ntv, updated, strict=True):
            if x is not None:
                values[id(v)] = x
        opt_vars = optimizer.variables
        new_group, new_opt = optimizer.stateless_apply(
            [values[id(v)] for v in opt_vars], grads, [values[i] for i in ids])
        values.update(zip(ids, new_group, strict=True))
        values.update(zip([id(v) for v in opt_vars], new_opt, strict=True))

        mapping = [(v, values[id(v)]) for v in model.metrics_variables]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            model.update_trackers(logs)
        for v in model.metrics_variables:
            x = scope.get_current_value(v)
            if x is not None:
                values[id(v)] = x

    mapping = [(v, values[id(v)]) for v in model.metrics_variables]
    with keras.StatelessScope(state_mapping=mapping):
        results = model.tracker_results()
    new_state = (
        [values[id(v)] for v in tv],
        [values[id(v)] for v in ntv],
        [values[id(v)] for v in model.optimizer.variables],
        [values[id(v)] for v in model.metrics_variables],
    )
    return results, new_state


def test_step(model, state, data):
    trainable, non_trainable, metrics_values = state
    tv, ntv, mv = model.trainable_variables, model.non_trainable_variables, model.metrics_variables
    mapping = list(zip(tv, trainable, strict=True)) + list(zip(ntv, non_trainable, strict=True))
    metrics_map = dict(zip([id(v) for v in mv], metrics_values, strict=True))
    for group, _, _ in model.train_groups(need_optimizer=False):
        with keras.StatelessScope(state_mapping=mapping):  # updates are discarded
            _, logs = model.group_loss(group, data)
        with keras.StatelessScope(state_mapping=[(v, metrics_map[id(v)]) for v in mv]) as scope:
            model.update_trackers(logs)
        for v in mv:
            x = scope.get_current_value(v)
            if x is not None:
                metrics_map[id(v)] = x
    with keras.StatelessScope(state_mapping=[(v, metrics_map[id(v)]) for v in mv]):
        results = model.tracker_results()
    return results, (trainable, non_trainable, [metrics_map[id(v)] for v in mv])
