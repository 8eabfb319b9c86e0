"""DQN: TD targets against NumPy, target-network updates, replay buffer, CartPole."""

import keras
import numpy as np
import pytest

from kdl.models.dqn import DQN, ReplayBuffer, evaluate_policy, train_cartpole
from kdl.models.dqn.dqn import NumpyPolicy


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


def test_numpy_policy_matches_the_q_network():
    model = DQN(4, 3, widths=(16, 8))
    obs = np.random.default_rng(2).normal(size=(6, 4)).astype("float32")
    policy = NumpyPolicy(model)
    np.testing.assert_allclose(policy.q_values(obs), to_np(model(obs)), rtol=1e-5, atol=1e-5)
    assert policy.act(obs[0]) == int(to_np(model(obs[:1]))[0].argmax())


def test_cartpole_loop_runs_a_few_steps():
    pytest.importorskip("gymnasium", reason="gymnasium==1.4.0 is needed for CartPole")
    model = DQN(4, 2, widths=(8,))
    before = [w.copy() for w in model.q_network.get_weights()]
    model, returns = train_cartpole(model, steps=300, learning_starts=100, batch_size=8,
                                    train_every=50, gradient_steps=4, eval_every=100,
                                    eval_episodes=1, stop_at=None)
    assert returns and all(r >= 1 for r in returns)
    after = model.q_network.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(after, before, strict=True))
    # the kept (best) weights are also the target network's
    obs = np.zeros((1, 4), "float32")
    np.testing.assert_allclose(to_np(model(obs)), to_np(model.target_network(obs)), rtol=1e-6)
    returns = evaluate_policy(model, episodes=3)
    assert len(returns) == 3 and all(1 <= r <= 500 for r in returns)


def test_train_cartpole_rejects_a_start_before_one_batch():
    pytest.importorskip("gymnasium", reason="gymnasium==1.4.0 is needed for CartPole")
    with pytest.raises(ValueError, match="learning_starts"):
        train_cartpole(DQN(4, 2, widths=(8,)), steps=10, learning_starts=4, batch_size=8)


@pytest.mark.slow
def test_dqn_solves_cartpole():
    pytest.importorskip("gymnasium", reason="gymnasium==1.4.0 is needed for CartPole")
    model, _ = train_cartpole(seed=0, log=print)
    returns = evaluate_policy(model, episodes=100)
    print(f"mean greedy return over 100 episodes: {np.mean(returns):.1f}")
    assert np.mean(returns) >= 195, f"mean greedy return {np.mean(returns):.1f} over 100 episodes"


def test_cartpole_command_writes_the_model_and_judges_it(tmp_path, capsys):
    pytest.importorskip("gymnasium", reason="gymnasium==1.4.0 is needed for CartPole")
    import json

    from pipelines.cli import main

    # 1,100 steps: one gradient phase, far from solved, so the command exits 1
    rc = main(["cartpole", "--steps", "1100", "--episodes", "3", "--out", str(tmp_path)])
    (run_dir,) = tmp_path.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert rc == (0 if metrics["solved"] else 1)
    assert metrics["episodes"] == 3 and metrics["bar"] == 195
    assert (metrics["mean_return"] >= 195) == metrics["solved"]
    model = keras.saving.load_model(run_dir / "model.keras")
    assert isinstance(model, DQN)
    assert "mean greedy return over 3 episodes" in capsys.readouterr().out
    assert main(["cartpole", "--steps", "0", "--out", str(tmp_path)]) == 2
