import pytest

from qshampoo.bench.tasks import get_task


@pytest.fixture(scope="session")
def digits_task():
    return get_task("digits")


@pytest.fixture(scope="session")
def digits_data(digits_task):
    return digits_task.data_fn()


@pytest.fixture(autouse=True)
def _one_thread():
    """The bench tests train tiny models: one intra-op thread is as fast, and it keeps them fast
    on a machine whose cores are busy (spinning OpenMP workers slow down under contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
