"""Custom train step, TensorFlow: `tf.GradientTape` per variable group."""

import tensorflow as tf


def train_step(model, data):
    for group, variables, optimizer in model.train_groups():
        with tf.GradientTape() as tape:
            loss, logs = model.group_loss(group, data)
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else g
                 for g, v in zip(grads, variables, strict=True)]
        optimizer.apply(grads, variables)
        model.update_trackers(logs)
    return model.tracker_results()


def test_step(model, data):
    # losses as in training, without updates: non-trainable state is restored
    saved = [tf.identity(v.value) for v in model.non_trainable_variables]
    for group, _, _ in model.train_groups(need_optimizer=False):
        _, logs = model.group_loss(group, data)
        model.update_trackers(logs)
    for v, x in zip(model.non_trainable_variables, saved, strict=True):
        v.assign(x)
    return model.tracker_results()
