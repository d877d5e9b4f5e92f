import json

from qshampoo.bench import tune_lr


def test_tune_lr_grows_the_grid_past_an_edge(digits_task, tmp_path):
    result = tune_lr(
        digits_task,
        ["adamw"],
        out=tmp_path,
        steps=15,
        grids={"adam": [1e-4, 3e-4]},  # far too small: the best is the upper edge
        max_extend=1,
    )
    r = result["optimizers"]["adamw"]
    assert list(r["scores"]) == ["0.0001", "0.0003", "0.000949"]
    assert r["best"] in (3e-4, 3e-4 * 10**0.5)
    saved = json.loads((tmp_path / "tuning.json").read_text())
    assert saved["optimizers"]["adamw"]["best"] == r["best"]
    assert saved["steps"] == 15 and saved["seeds"] == [1000]
    # Runs are reused: a second call trains nothing new and agrees.
    again = tune_lr(
        digits_task, ["adamw"], out=tmp_path, steps=15, grids={"adam": [1e-4, 3e-4]}, max_extend=1
    )
    assert again["optimizers"]["adamw"]["scores"] == r["scores"]
