"""The user-model API on a model and data the harness does not ship."""

import json

import torch

from qshampoo.bench import compare, make_task


def regression_data(n, seed):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1 * torch.randn(n, generator=g)
    return x, y.unsqueeze(1)


def model_fn():
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def mse(out, y):
    return torch.nn.functional.mse_loss(out, y)


def test_compare_writes_the_report(tmp_path):
    out = compare(
        model_fn,
        regression_data(256, 0),
        regression_data(64, 1),
        mse,
        optimizers=["adamw", "shampoo4bit"],
        seeds=[0, 1],
        steps=30,
        batch_size=32,
        lr={"adamw": 1e-2, "shampoo4bit": 1e-2},
        out=tmp_path / "rep",
        isolate=False,
        progress=False,
        name="regression",
        budgets=(0.5,),
    )
    doc = json.loads((out / "results.json").read_text())
    # the time to quality: the candidate trains a half-length schedule for each seed where its
    # full one reached AdamW's loss
    full = [r for r in doc["runs"] if "budget" not in r]
    final = {(r["optimizer"], r["seed"]): r["final"]["metric"] for r in full}
    reached = [s for s in (0, 1) if final[("shampoo4bit", s)] <= final[("adamw", s)]]
    budget = [(r["optimizer"], r["seed"]) for r in doc["runs"] if r.get("budget") == 0.5]
    assert budget == [("shampoo4bit", s) for s in reached]
    assert doc["meta"]["task"] == "regression" and doc["meta"]["metric_name"] == "test loss"
    assert doc["meta"]["higher_is_better"] is False
    assert {r["optimizer"] for r in doc["runs"]} == {"adamw", "shampoo4bit"}
    r = doc["runs"][0]
    assert r["final"]["metric"] == r["final"]["loss"] < r["losses"][0]
    assert "| AdamW |" in (out / "report.md").read_text()


def test_dataset_and_metric(tmp_path):
    x, y = regression_data(128, 0)
    ds = torch.utils.data.TensorDataset(x, (y[:, 0] > 0).long())
    task = make_task(
        lambda: torch.nn.Linear(5, 2),
        ds,
        torch.utils.data.DataLoader(ds, batch_size=7),
        torch.nn.functional.cross_entropy,
        lambda out, t: (out.argmax(1) == t).float().mean(),
        metric_name="accuracy",
        batch_size=16,
    )
    data = task.data_fn()
    assert data.train.batch(0, 0)[0].shape == (16, 5)
    assert task.higher_is_better and task.lr_source.startswith("family defaults")
    val = task.data_fn(validation=True)
    assert val.test.n == 13 and val.train.n == 115
