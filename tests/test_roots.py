import pytest
import torch

from qshampoo.roots import inverse_root, max_eigenvalue


def spd(n, cond, seed=0, dtype=torch.float64):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return ((Q * lam) @ Q.T).to(dtype)


def reference(A, eps, p=4):
    lam, V = torch.linalg.eigh(A.double())
    lam = lam.clamp_min(0) + eps * lam.max()
    return (V * lam ** (-1.0 / p)) @ V.T


@pytest.mark.parametrize("method", ["eigh", "newton"])
@pytest.mark.parametrize("n", [1, 8, 64, 200])
@pytest.mark.parametrize("cond", [1e1, 1e3, 1e6])
def test_inverse_root_matches_float64(method, n, cond):
    A = spd(n, cond)
    eps = 1e-6
    root, ok = inverse_root(A.float(), eps=eps, method=method)
    assert ok.item()
    ref = reference(A, eps)
    err = (root.double() - ref).norm() / ref.norm()
    # fp32 resolves eigenvalues to about 1e-7 * lambda_max, so the smallest eigenvalues of an
    # ill-conditioned matrix (which dominate A^(-1/4)) carry an error that grows with cond.
    tol = {1e1: 1e-4, 1e3: 2e-3, 1e6: 3e-2}[cond]
    assert err < tol, f"{method} n={n} cond={cond}: relative error {err:.2e}"


@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_batched_equals_one_at_a_time(method):
    A = torch.stack([spd(16, 1e3, seed=s).float() for s in range(3)])
    root, ok = inverse_root(A, method=method)
    assert ok.all()
    for i in range(3):
        single, _ = inverse_root(A[i], method=method)
        torch.testing.assert_close(root[i], single, rtol=1e-4, atol=1e-5)


def test_failure_is_reported_not_raised():
    A = torch.stack([spd(4, 10).float(), torch.full((4, 4), float("nan"))])
    root, ok = inverse_root(A)
    assert ok.tolist() == [True, False]
    torch.testing.assert_close(root[0], inverse_root(A[0])[0])


def test_max_eigenvalue():
    A = spd(50, 1e4)
    assert max_eigenvalue(A, iters=100).item() == pytest.approx(1.0, rel=1e-6)


def test_unknown_method():
    with pytest.raises(ValueError, match="root_method"):
        inverse_root(torch.eye(3), method="svd")
