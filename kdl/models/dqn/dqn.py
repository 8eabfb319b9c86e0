"""Deep Q-network (Mnih et al. 2015): Q-network, target network, replay buffer."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from kdl.backend import CustomTrainModel
from kdl.registry import MODELS

PRESETS = {
    "tiny": {"widths": (8,)},
    "default": {"widths": (128, 128), "gamma": 0.99},
}


def q_net(observation_dim, num_actions, widths, name):
    obs = keras.Input(shape=(observation_dim,), name=f"{name}_inputs")
    x = obs
    for i, u in enumerate(widths):
        x = keras.layers.Dense(u, activation="relu", name=f"dense_{i}")(x)
    return keras.Model(obs, keras.layers.Dense(num_actions, name="q")(x), name=name)


def _transitions(data):
    if isinstance(data, tuple) and len(data) == 1:
        data = data[0]
    if isinstance(data, tuple) and isinstance(data[0], list | tuple):
        data = data[0]
    if not (isinstance(data, list | tuple) and len(data) == 5):
        raise ValueError("DQN trains on [obs, actions, rewards, next_obs, dones] batches")
    return data


@keras.saving.register_keras_serializable(package="kdl")
class DQN(CustomTrainModel):
    """A Q-network trained on replayed transitions against a target network.

    The TD target is `r + gamma (1 - done) max_a' Q_target(s', a')`
    (`double=True`: the online network picks a', the target network scores
    it); the loss is the Huber loss of `Q(s, a)` to it. The target network is
    a non-trainable copy refreshed by `update_target()` (hard, or Polyak with
    `tau < 1`).

    Args:
        observation_dim: width of an observation.
        num_actions: number of discrete actions.
        widths: hidden widths of the Q-network.
        gamma: discount.
        double: double-DQN targets.

    Call arguments:
        obs: `(batch, observation_dim)`; returns Q-values `(batch, num_actions)`.
    """

    log_names = ("loss", "q")

    def __init__(self, observation_dim, num_actions, widths=(128, 128), gamma=0.99,
                 double=True, **kwargs):
        super().__init__(**kwargs)
        self.observation_dim = observation_dim
        self.num_actions = num_actions
        self.widths = tuple(widths)
        self.gamma = gamma
        self.double = double
        self.q_network = q_net(observation_dim, num_actions, self.widths, "q_network")
        self.target_network = q_net(observation_dim, num_actions, self.widths,
                                    "target_network")
        self.target_network.trainable = False
        self.update_target()
        self.built = True

    def call(self, obs, training=False):
        return self.q_network(obs, training=training)

    def update_target(self, tau: float = 1.0) -> None:
        """Copy the Q-network into the target network (`tau < 1`: Polyak averaging)."""
        for t, s in zip(self.target_network.weights, self.q_network.weights, strict=True):
            # a copy: the JAX trainer donates state buffers, which must not be shared
            t.assign(ops.copy(s) if tau == 1.0 else tau * s + (1 - tau) * t)

    def group_loss(self, group, data):
        obs, actions, rewards, next_obs, dones = _transitions(data)
        q = self.q_network(obs, training=True)
        onehot = ops.one_hot(ops.cast(actions, "int32"), self.num_actions)
        q_taken = ops.sum(q * onehot, axis=-1)
        next_target = self.target_network(next_obs)
        if self.double:
            best = ops.argmax(self.q_network(next_obs), axis=-1)
            next_q = ops.sum(next_target * ops.one_hot(best, self.num_actions), axis=-1)
        else:
            next_q = ops.max(next_target, axis=-1)
        target = ops.stop_gradient(
            ops.cast(rewards, q.dtype)
            + self.gamma * (1.0 - ops.cast(dones, q.dtype)) * next_q)
        err = q_taken - target
        huber = ops.where(ops.abs(err) <= 1.0, 0.5 * err ** 2, ops.abs(err) - 0.5)
        loss = ops.mean(huber)
        return loss, {"loss": loss, "q": ops.mean(q_taken)}

    def get_config(self):
        return {**super().get_config(), "observation_dim": self.observation_dim,
                "num_actions": self.num_actions, "widths": self.widths, "gamma": self.gamma,
                "double": self.double}


def _example(rng, batch):
    obs = rng.normal(size=(batch, 4)).astype("float32")
    tr = [obs, rng.integers(0, 2, batch).astype("int32"), rng.normal(size=batch).astype(
        "float32"), rng.normal(size=(batch, 4)).astype("float32"),
        np.zeros(batch, "float32")]
    return obs, tr


@MODELS.register("dqn", presets=PRESETS, tasks=("reinforcement",),
                 harness={"kwargs": {"observation_dim": 4, "num_actions": 2},
                          "example": _example, "output_shape": (2,)})
def dqn(observation_dim, num_actions, *, widths=(128, 128), gamma=0.99, double=True,
        name="dqn"):
    """A `DQN` (see the class)."""
    return DQN(observation_dim, num_actions, widths, gamma, double, name=name)


class ReplayBuffer:
    """A fixed-size circular buffer of transitions, sampled uniformly.

    Args:
        capacity: transitions kept (the oldest are overwritten).
        observation_dim: width of an observation.
        seed: sampling seed.
    """

    def __init__(self, capacity: int, observation_dim: int, seed: int = 0):
        self.capacity = capacity
        self.obs = np.zeros((capacity, observation_dim), "float32")
        self.next_obs = np.zeros((capacity, observation_dim), "float32")
        self.actions = np.zeros(capacity, "int32")
        self.rewards = np.zeros(capacity, "float32")
        self.dones = np.zeros(capacity, "float32")
        self.size = 0
        self.pos = 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, action, reward, next_obs, done) -> None:
        i = self.pos
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_obs[i], self.dones[i] = next_obs, float(done)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int, batches: int = 1) -> list[np.ndarray]:
        """`batches` uniform batches (with replacement), concatenated in order."""
        if self.size < batch_size:
            raise ValueError(f"the buffer holds {self.size} transitions, fewer than a batch "
                             f"of {batch_size}")
        idx = self.rng.integers(0, self.size, batch_size * batches)
        return [self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx],
                self.dones[idx]]


def _make_env(name: str, seed: int):
    try:
        import gymnasium as gym
    except ImportError as e:
        raise ImportError("DQN on CartPole needs gymnasium: pip install gymnasium==1.4.0") from e
    env = gym.make(name)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


class NumpyPolicy:
    """A snapshot of a `DQN`'s Q-network as NumPy arrays, for acting between updates.

    Acting needs one forward pass per environment step; through Keras that is a
    framework call per step (most of the wall time of a CartPole run), while the
    weights only change in the gradient phases. Like the actors of distributed
    DQN, the loop acts with a copy refreshed after each phase. The copy is exact:
    `q_values` equals the Q-network's output (checked in the tests).

    Args:
        model: a `DQN` whose Q-network is Dense layers (relu, then a linear head).
    """

    def __init__(self, model: DQN):
        self.layers = []
        for layer in model.q_network.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            act = getattr(layer, "activation", None)
            if not isinstance(layer, keras.layers.Dense) or act not in (
                    keras.activations.relu, keras.activations.linear):
                raise TypeError(f"NumpyPolicy reads Dense relu/linear layers; "
                                f"{layer.name} is {type(layer).__name__}")
            kernel, bias = (ops.convert_to_numpy(w) for w in (layer.kernel, layer.bias))
            self.layers.append((kernel, bias, act is keras.activations.relu))

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, "float32")
        for kernel, bias, relu in self.layers:
            x = x @ kernel + bias
            if relu:
                x = np.maximum(x, 0.0)
        return x

    def act(self, obs: np.ndarray) -> int:
        return int(self.q_values(obs[None])[0].argmax())


def _greedy_returns(q_values, env_name: str, episodes: int, seed: int) -> list[float]:
    """Returns of `episodes` greedy episodes (seeds `seed`, `seed + 1`, ...) played side
    by side: one batched `q_values(obs)` call per time step for all of them."""
    envs = [_make_env(env_name, seed + ep) for ep in range(episodes)]
    obs = np.stack([env.reset(seed=seed + ep)[0] for ep, env in enumerate(envs)])
    obs = obs.astype("float32")
    returns = np.zeros(episodes)
    active = np.ones(episodes, bool)
    while active.any():
        # a fixed batch shape (finished episodes' rows are ignored): no recompiles
        actions = np.asarray(q_values(obs)).argmax(-1)
        for i in np.flatnonzero(active):
            o, r, term, trunc, _ = envs[i].step(int(actions[i]))
            obs[i] = o
            returns[i] += r
            active[i] = not (term or trunc)
    for env in envs:
        env.close()
    return returns.tolist()


def evaluate_policy(model: DQN, episodes: int = 100, env_name: str = "CartPole-v1",
                    seed: int = 1000) -> list[float]:
    """Returns of greedy episodes (argmax Q), the Keras Q-network acting.

    The episodes run side by side: one batched Q-network call per time step
    for all unfinished episodes (seeds `seed`, `seed + 1`, ...).
    """
    return _greedy_returns(lambda obs: ops.convert_to_numpy(model.q_network(obs)), env_name,
                           episodes, seed)


def train_cartpole(model: DQN | None = None, *, steps: int = 50_000, batch_size: int = 64,
                   buffer_size: int = 100_000, learning_starts: int = 1_000,
                   train_every: int = 256, gradient_steps: int = 128,
                   epsilon_start: float = 1.0, epsilon_end: float = 0.04,
                   epsilon_steps: int = 8_000, learning_rate: float = 2.3e-3,
                   global_clipnorm: float = 10.0, tau: float = 1.0,
                   eval_every: int = 1_024, eval_episodes: int = 10,
                   env_name: str = "CartPole-v1", seed: int = 0,
                   stop_at: float | None = 500.0,
                   log=None) -> tuple[DQN, list[float]]:
    """Train a DQN on a gymnasium environment; returns the model and training returns.

    The loop: act epsilon-greedily (epsilon falls linearly from `epsilon_start`
    to `epsilon_end` over `epsilon_steps` environment steps) with a NumPy
    snapshot of the Q-network; every `train_every` environment steps, refresh
    the target network (`tau`: 1 copies, < 1 averages), then take
    `gradient_steps` Adam steps (Huber loss, double-DQN targets as the model
    is configured, gradients clipped to `global_clipnorm`) on uniformly
    replayed batches, through the model's compiled train step (one `fit`
    call per phase). Truncation
    (the time limit) is not a terminal state for the TD target.

    Every `eval_every` environment steps the greedy policy plays
    `eval_episodes` episodes (seeds of their own, apart from
    `evaluate_policy`'s); the best-scoring weights are kept and restored at the
    end, and training stops once that score reaches `stop_at`. Defaults follow
    the tuned CartPole settings of RL Baselines3 Zoo (256x256 network).

    Args:
        log: optional `callable(str)` for a progress line after each evaluation.
    """
    if train_every < 1 or gradient_steps < 1 or eval_every < 1:
        raise ValueError("train_every, gradient_steps and eval_every must be >= 1")
    if learning_starts < batch_size:
        raise ValueError(f"learning_starts ({learning_starts}) must be >= batch_size "
                         f"({batch_size}): the first update samples a full batch")
    env = _make_env(env_name, seed)
    obs_dim = int(env.observation_space.shape[0])
    n_actions = int(env.action_space.n)
    if model is None:
        model = DQN(obs_dim, n_actions, widths=(256, 256))
    if getattr(model, "optimizer", None) is None:
        model.compile(keras.optimizers.Adam(learning_rate, global_clipnorm=global_clipnorm))
    buffer = ReplayBuffer(buffer_size, obs_dim, seed)
    rng = np.random.default_rng(seed)
    policy = NumpyPolicy(model)
    returns, total = [], 0.0
    best_score, best_weights = -np.inf, None
    obs, _ = env.reset(seed=seed)
    for step in range(1, steps + 1):
        frac = min(step / epsilon_steps, 1.0)
        eps = epsilon_start + frac * (epsilon_end - epsilon_start)
        action = int(rng.integers(n_actions)) if rng.uniform() < eps else policy.act(obs)
        next_obs, r, term, trunc, _ = env.step(action)
        buffer.add(obs, action, r, next_obs, term)
        obs, total = next_obs, total + r
        if term or trunc:
            returns.append(total)
            obs, total = env.reset()[0], 0.0
        if step >= learning_starts and step % train_every == 0:
            model.update_target(tau)
            # one `fit` over `gradient_steps` replayed batches: the compiled train step
            # runs back to back (per-call `train_on_batch` costs more than the step)
            model.fit(buffer.sample(batch_size, gradient_steps), batch_size=batch_size,
                      epochs=1, shuffle=False, verbose=0)
            policy = NumpyPolicy(model)
        if step >= learning_starts and step % eval_every == 0:
            score = float(np.mean(_greedy_returns(policy.q_values, env_name, eval_episodes,
                                                  seed + 10_000 + step)))
            if score > best_score:
                best_score, best_weights = score, model.q_network.get_weights()
            if log is not None:
                recent = np.mean(returns[-20:]) if returns else float("nan")
                log(f"step {step}: greedy {score:.1f} (best {best_score:.1f}), "
                    f"training episodes {recent:.1f}, epsilon {eps:.3f}")
            if stop_at is not None and best_score >= stop_at:
                break
    env.close()
    if best_weights is not None:
        model.q_network.set_weights(best_weights)
        model.update_target()
    return model, returns
