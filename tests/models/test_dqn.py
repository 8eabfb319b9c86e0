"""DQN: TD targets against NumPy, target-network updates, replay buffer, CartPole."""

import keras
import numpy as np
import pytest

from kdl.models.dqn import DQN, ReplayBuffer, evaluate_policy, train_cartpole


def to_np(x):
    return keras.ops.convert_to_numpy(x)


def test_td_loss_matches_numpy():
    model = DQN(3, 2, widths=(4,), gamma=0.9, double=False)
    rng = np.random.default_rng(0)
    obs, nxt = rng.normal(size=(2, 5, 3)).astype("float32")
    a = np.array([0, 1, 1, 0, 1], "int32")
    r = rng.normal(size=5).astype("float32")
    d = np.array([0, 0, 1, 0, 1], "float32")
    loss, logs = model.group_loss("loss", [obs, a, r, nxt, d])
    q = to_np(model(obs))[np.arange(5), a]
    target = r + 0.9 * (1 - d) * to_np(model.target_network(nxt)).max(1)
    err = q - target
    ref = np.where(np.abs(err) <= 1, 0.5 * err ** 2, np.abs(err) - 0.5).mean()
    np.testing.assert_allclose(float(to_np(loss)), ref, rtol=1e-5)


def test_target_network_moves_only_on_update():
    model = DQN(3, 2, widths=(4,))
    model.compile(keras.optimizers.Adam(1e-2))
    obs = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    np.testing.assert_allclose(to_np(model(obs)), to_np(model.target_network(obs)))
    batch = [obs, np.zeros(4, "int32"), np.ones(4, "float32"), obs, np.zeros(4, "float32")]
    model.train_on_batch(batch)
    before_target = to_np(model.target_network(obs))
    assert not np.allclose(to_np(model(obs)), before_target)
    model.train_on_batch(batch)
    np.testing.assert_allclose(to_np(model.target_network(obs)), before_target)
    model.update_target()
    np.testing.assert_allclose(to_np(model(obs)), to_np(model.target_network(obs)), rtol=1e-6)
    assert len(model.trainable_weights) == len(model.q_network.trainable_weights)


def test_replay_buffer_wraps_and_samples():
    buf = ReplayBuffer(3, 2, seed=0)
    for i in range(5):
        buf.add(np.full(2, i), i % 2, float(i), np.full(2, i + 1), i == 4)
    assert len(buf) == 3 and sorted(buf.rewards.tolist()) == [2.0, 3.0, 4.0]
    obs, act, rew, nxt, done = buf.sample(3)
    assert obs.shape == (3, 2) and np.all(nxt[:, 0] == obs[:, 0] + 1)
    with pytest.raises(ValueError, match="fewer than a batch"):
        ReplayBuffer(4, 2).sample(2)


def test_cartpole_loop_runs_a_few_steps():
    pytest.importorskip("gymnasium", reason="gymnasium==1.4.0 is needed for CartPole")
    model, returns = train_cartpole(DQN(4, 2, widths=(8,)), steps=300, learning_starts=100,
                                    batch_size=8, target_every=50)
    assert returns and all(r >= 1 for r in returns)


@pytest.mark.slow
def test_dqn_solves_cartpole():
    pytest.importorskip("gymnasium", reason="gymnasium==1.4.0 is needed for CartPole")
    model, _ = train_cartpole(steps=60_000, seed=0)
    returns = evaluate_policy(model, episodes=100)
    assert np.mean(returns) >= 195, f"mean greedy return {np.mean(returns):.1f} over 100 episodes"
