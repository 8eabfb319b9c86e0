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
