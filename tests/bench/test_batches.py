import torch

from qshampoo.bench.batches import ClassificationBatches, TokenWindows


def test_classification_batches_are_a_function_of_seed_and_step():
    x = torch.arange(100).float().unsqueeze(1)
    y = torch.arange(100)
    a = ClassificationBatches(x, y, batch_size=16)
    b = ClassificationBatches(x, y, batch_size=16)
    assert a.steps_per_epoch == 6
    for step in (0, 5, 6, 13):
        xa, ya = a.batch(3, step)
        xb, yb = b.batch(3, step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # One epoch visits distinct samples; another seed gives another order.
    seen = torch.cat([a.batch(3, s)[1] for s in range(6)])
    assert len(seen.unique()) == 96
    assert not torch.equal(a.batch(3, 0)[1], a.batch(4, 0)[1])
    assert not torch.equal(a.batch(3, 0)[1], a.batch(3, 6)[1])  # epochs differ


def test_eval_batches_cover_the_set_or_an_even_subset():
    y = torch.arange(10).repeat_interleave(10)  # sorted by class
    b = ClassificationBatches(torch.zeros(100, 2), y, batch_size=8, drop_last=False)
    got = torch.cat([t for _, t in b.eval_batches(30)])
    assert torch.equal(got, y)
    sub = torch.cat([t for _, t in b.eval_batches(7, limit=20)])
    assert len(sub) == 20 and set(sub.tolist()) == set(range(10))


class PairDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.full((3,), float(i)), i


def test_map_style_dataset():
    b = ClassificationBatches(PairDataset(), batch_size=4)
    x, y = b.batch(0, 0)
    assert x.shape == (4, 3) and torch.equal(x[:, 0].long(), y)


def test_token_windows():
    tokens = torch.arange(1000)
    w = TokenWindows(tokens, block=16, batch_size=8)
    x, y = w.batch(0, 7)
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y, x + 1)
    assert torch.equal(w.batch(0, 7)[0], x)
    assert not torch.equal(w.batch(1, 7)[0], x)
    ex = torch.cat([e for e, _ in w.eval_batches(10, limit=12)])
    assert ex.shape == (12, 16)
