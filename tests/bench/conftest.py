import pytest

from qshampoo.bench.tasks import get_task


@pytest.fixture(scope="session")
def digits_task():
    return get_task("digits")


@pytest.fixture(scope="session")
def digits_data(digits_task):
    return digits_task.data_fn()
