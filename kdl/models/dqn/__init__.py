from kdl.models.dqn.dqn import DQN, ReplayBuffer, dqn, evaluate_policy, train_cartpole

__all__ = ["DQN", "ReplayBuffer", "dqn", "evaluate_policy", "train_cartpole"]
