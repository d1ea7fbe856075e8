"""`engine.Members`: fused members of one module are selected each on its own score, with its own
best epoch and state, in `train` and `train_seeds` alike (ties keep the earlier epoch)."""
from __future__ import annotations

import torch
from torch import nn

from kdbench.engine import Members, Step, train, train_seeds

SCORES = {"a": [1.0, 3.0, 2.0], "b": [5.0, 4.0, 6.0], "c": [2.0, 2.0, 1.0]}  # best (higher): epoch 2, 3, 1


def _setup():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    return model, opt, x, y


def test_train_keeps_one_best_per_member():
    model, opt, x, y = _setup()
    epoch = [0]

    def evaluate():
        epoch[0] += 1
        return {"val_acc": 0.0, **{k: v[epoch[0] - 1] for k, v in SCORES.items()}}

    res = train([Step("s", opt, lambda b: {"l": model(b.x).pow(2).mean()})], {"m": model}, x, y, epochs=3, batch_size=4,
                evaluate=evaluate, members=Members(list(SCORES), lambda i: {"at": epoch[0], "member": i}))
    assert [(b.epoch, b.score) for b in res.members] == [(2, 3.0), (3, 6.0), (1, 2.0)]
    assert [b.state for b in res.members] == [{"at": 2, "member": 0}, {"at": 3, "member": 1}, {"at": 1, "member": 2}]
    assert res.best_epoch == 1  # the loop's own selection (constant val_acc: the first epoch) is unchanged


def test_train_seeds_keeps_one_best_per_member_of_each_seed():
    model, opt, x, y = _setup()
    epoch = [0]

    def evaluate():
        epoch[0] += 1
        e = epoch[0] - 1
        return [{"val_acc": 0.0, "a": SCORES["a"][e], "b": SCORES["b"][e]},
                {"val_acc": 0.0, "a": SCORES["b"][e], "b": SCORES["c"][e]}]

    loss = lambda b: {"l": model(b.x).pow(2).mean((1, 2))}  # noqa: E731  (s,) per seed
    results = train_seeds([Step("s", opt, loss)], {"m": model}, x, y, seeds=[0, 1], epochs=3, batch_size=4,
                          member_state=lambda i: {}, evaluate=evaluate,
                          members=Members(["a", "b"], lambda seed, i: {"at": epoch[0], "seed": seed, "member": i}))
    assert [[(b.epoch, b.state["seed"], b.state["member"]) for b in r.members] for r in results] == \
        [[(2, 0, 0), (3, 0, 1)], [(3, 1, 0), (1, 1, 1)]]
