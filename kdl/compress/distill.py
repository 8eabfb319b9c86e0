"""Knowledge distillation: a student learns from a trained teacher's softened outputs."""

from __future__ import annotations

import keras
from keras import ops

# Smallest probability whose log is kept: float32's smallest normal number. A
# larger floor (Keras's epsilon, 1e-7) flattens every class a confident teacher
# gives less than 1e-7 to the same value, and erases the ranking of the wrong
# classes that distillation transfers.
PROB_FLOOR = 1.1754944e-38


def _log_probs(y, from_logits: bool, temperature: float):
    logits = y if from_logits else ops.log(ops.maximum(ops.cast(y, "float32"), PROB_FLOOR))
    return ops.log_softmax(ops.divide(ops.cast(logits, "float32"), temperature), axis=-1)


def distillation_loss(teacher_pred, student_pred, temperature: float = 4.0,
                      from_logits: bool = False):
    """`T^2 * KL(softmax(t/T) || softmax(s/T))`, averaged over the batch.

    With `from_logits=False` the predictions are probabilities (kdl
    classifiers end in softmax) and their logs serve as logits: softmax of
    `log(p) / T` is the temperature-softened distribution.
    """
    log_t = _log_probs(teacher_pred, from_logits, temperature)
    log_s = _log_probs(student_pred, from_logits, temperature)
    kl = ops.sum(ops.multiply(ops.exp(log_t), ops.subtract(log_t, log_s)), axis=-1)
    return ops.multiply(ops.mean(kl), temperature**2)


@keras.saving.register_keras_serializable(package="kdl")
class Distiller(keras.Model):
    """Trains `student` on `alpha * hard-label loss + (1 - alpha) * distillation loss`.

    The teacher is frozen and only run forward. Works with `fit` on every
    backend (the loss is computed in `compute_loss`). After training, use
    `distiller.student` (a plain model) for export.

    Args:
        student: the model to train (Functional/Sequential/subclassed).
        teacher: a trained model with the same output shape.
        temperature: softening temperature `T` (> 0).
        alpha: weight of the hard-label loss, in [0, 1].
        from_logits: whether both models output logits (default: probabilities).

    Call arguments:
        inputs: the student's inputs; returns the student's predictions.

    Example:

    ```python
    d = Distiller(student, teacher, temperature=4.0, alpha=0.1)
    d.compile(optimizer="adam", metrics=["accuracy"])
    d.fit(x, y, epochs=10)
    small = d.student
    ```
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, temperature: float = 4.0,
                 alpha: float = 0.1, from_logits: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        t_shape, s_shape = teacher.outputs[0].shape[1:], student.outputs[0].shape[1:]
        if tuple(t_shape) != tuple(s_shape):
            raise ValueError(f"teacher outputs {tuple(t_shape)} but student outputs "
                             f"{tuple(s_shape)}: they must predict the same classes")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = temperature
        self.alpha = alpha
        self.from_logits = from_logits

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        teacher_pred = ops.stop_gradient(self.teacher(x, training=False))
        hard = ops.mean(keras.losses.sparse_categorical_crossentropy(
            y, y_pred, from_logits=self.from_logits))
        soft = distillation_loss(teacher_pred, y_pred, self.temperature, self.from_logits)
        return self.alpha * hard + (1.0 - self.alpha) * soft

    def get_config(self):
        return {**super().get_config(),
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "temperature": self.temperature, "alpha": self.alpha,
                "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)
