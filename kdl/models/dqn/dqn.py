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

    def sample(self, batch_size: int) -> list[np.ndarray]:
        if self.size < batch_size:
            raise ValueError(f"the buffer holds {self.size} transitions, fewer than a batch "
                             f"of {batch_size}")
        idx = self.rng.integers(0, self.size, batch_size)
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


def evaluate_policy(model: DQN, episodes: int = 100, env_name: str = "CartPole-v1",
                    seed: int = 1000) -> list[float]:
    """Returns of greedy episodes (argmax Q)."""
    env = _make_env(env_name, seed)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            q = keras.ops.convert_to_numpy(model.q_network(obs[None].astype("float32")))
            obs, r, term, trunc, _ = env.step(int(q[0].argmax()))
            total += r
            done = term or trunc
        returns.append(total)
    env.close()
    return returns


def train_cartpole(model: DQN | None = None, *, steps: int = 40_000, batch_size: int = 64,
                   buffer_size: int = 50_000, learning_starts: int = 1_000, train_every: int = 1,
                   target_every: int = 500, epsilon_start: float = 1.0,
                   epsilon_end: float = 0.02, epsilon_steps: int = 10_000,
                   learning_rate: float = 5e-4, env_name: str = "CartPole-v1",
                   seed: int = 0, stop_at: float | None = 475.0) -> tuple[DQN, list[float]]:
    """Train a DQN on a gymnasium environment (epsilon-greedy, replay, target network).

    Returns the model and the training episodes' returns. Stops early when the
    mean of the last 20 training returns reaches `stop_at`.
    """
    env = _make_env(env_name, seed)
    obs_dim = int(env.observation_space.shape[0])
    n_actions = int(env.action_space.n)
    if model is None:
        model = DQN(obs_dim, n_actions)
    if getattr(model, "optimizer", None) is None:
        model.compile(keras.optimizers.Adam(learning_rate))
    buffer = ReplayBuffer(buffer_size, obs_dim, seed)
    rng = np.random.default_rng(seed)
    returns, total = [], 0.0
    obs, _ = env.reset(seed=seed)
    for step in range(steps):
        frac = min(step / epsilon_steps, 1.0)
        eps = epsilon_start + frac * (epsilon_end - epsilon_start)
        if rng.uniform() < eps:
            action = int(rng.integers(n_actions))
        else:
            q = keras.ops.convert_to_numpy(model.q_network(obs[None].astype("float32")))
            action = int(q[0].argmax())
        next_obs, r, term, trunc, _ = env.step(action)
        buffer.add(obs, action, r, next_obs, term)  # truncation is not a terminal state
        obs, total = next_obs, total + r
        if term or trunc:
            returns.append(total)
            obs, total = env.reset()[0], 0.0
            if stop_at is not None and len(returns) >= 20 and np.mean(returns[-20:]) >= stop_at:
                break
        if step >= learning_starts and step % train_every == 0:
            model.train_on_batch(buffer.sample(batch_size))
        if step % target_every == 0:
            model.update_target()
    env.close()
    return model, returns
