import pytest
import torch

from qshampoo import linalg


@pytest.fixture(params=[4, 512])
def base(request, monkeypatch):
    """Small base orders exercise the recursion on small matrices."""
    monkeypatch.setattr(linalg, "BASE_ORDER", request.param)
    return request.param


def spd(n, batch=(), seed=0):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    X = torch.randn(*batch, n, 2 * n, generator=g)
    return X @ X.mT / n + 1e-3 * torch.eye(n)


@pytest.mark.parametrize("n", [1, 5, 33, 600])
def test_cholesky_lower_matches_lapack(base, n):
    A = spd(n, batch=(2,))
    C, info = linalg.cholesky_lower(A)
    assert (info == 0).all() and C.is_contiguous()
    torch.testing.assert_close(C, torch.linalg.cholesky(A), rtol=1e-4, atol=1e-5)
    assert torch.equal(C.triu(1), torch.zeros_like(C))


@pytest.mark.parametrize("bad", [0, 3, 20])
def test_cholesky_lower_reports_the_failing_minor(base, bad):
    A = spd(24)
    A[bad, bad] = -1.0  # leading minor bad+1 is not positive definite
    _, info = linalg.cholesky_lower(A)
    _, expected = torch.linalg.cholesky_ex(A)
    assert info.item() == expected.item() == bad + 1


@pytest.mark.parametrize("n", [1, 7, 40, 700])
def test_lower_gram_equals_dense_product(base, n):
    C = torch.linalg.cholesky(spd(n, batch=(3,)))
    torch.testing.assert_close(linalg.lower_gram(C), C @ C.mT, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None])
def test_all_finite_equals_isfinite_all(bad):
    x = torch.randn(5, 7, 6, generator=torch.Generator(torch.get_default_device()).manual_seed(0))
    if bad is not None:
        x[1, 3, 2] = bad
        x[4, 0, 5] = bad
    expected = torch.isfinite(x).flatten(1).all(1)
    assert torch.equal(linalg.all_finite(x), expected)
    assert expected.any() and (bad is None or not expected.all())
    assert torch.equal(linalg.all_finite(x[2]), torch.tensor(True))
