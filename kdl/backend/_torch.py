"""Custom train step, PyTorch: `torch.autograd.grad` per variable group."""

import torch


def train_step(model, data):
    for group, variables, optimizer in model.train_groups():
        loss, logs = model.group_loss(group, data)
        values = [v.value for v in variables]
        grads = torch.autograd.grad(loss, values, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g
                 for g, x in zip(grads, values, strict=True)]
        with torch.no_grad():
            optimizer.apply(grads, variables)
        model.update_trackers({k: v.detach() for k, v in logs.items()})
    return model.tracker_results()


def test_step(model, data):
    # losses as in training, without updates: non-trainable state is restored
    with torch.no_grad():
        saved = [v.value.clone() for v in model.non_trainable_variables]
        for group, _, _ in model.train_groups(need_optimizer=False):
            _, logs = model.group_loss(group, data)
            model.update_trackers(logs)
        for v, x in zip(model.non_trainable_variables, saved, strict=True):
            v.assign(x)
    return model.tracker_results()
