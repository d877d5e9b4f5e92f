"""A plain, dense implementation of 32-bit Shampoo (algorithm.md section 1) for the tests.

Deliberately independent of the package: explicit loops over blocks, float64 eigh roots.
"""

from __future__ import annotations

import math

import torch


def matrix_view_shape(shape):
    dims = [d for d in shape if d != 1]
    if len(dims) < 2:
        return None
    return dims[0], math.prod(dims[1:])


def cuts(n, max_dim):
    out, s = [], 0
    while s < n:
        out.append((s, min(s + max_dim, n)))
        s += max_dim
    return out


def inv_fourth_root(A, eps):
    lam, V = torch.linalg.eigh(A.double())
    lam = lam.clamp_min(0)
    lam = lam + eps * lam.max()
    return (V @ torch.diag(lam**-0.25) @ V.T).float()


class ReferenceShampoo:
    def __init__(
        self,
        params,
        *,
        lr,
        base,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        momentum=0.9,
        nesterov=False,
        stat_decay=0.95,
        matrix_eps=1e-6,
        T1=1,
        T2=1,
        max_dim=1200,
    ):
        self.params = list(params)
        self.__dict__.update(
            lr=lr,
            base=base,
            betas=betas,
            eps=eps,
            wd=weight_decay,
            mu=momentum,
            nesterov=nesterov,
            beta=stat_decay,
            meps=matrix_eps,
            T1=T1,
            T2=T2,
            max_dim=max_dim,
        )
        self.k = 0
        self.state = {}
        for p in self.params:
            st = {"m": torch.zeros_like(p), "v": torch.zeros_like(p), "buf": None}
            s2 = matrix_view_shape(p.shape)
            if s2 is not None:
                st["blocks"] = {}
                for r in cuts(s2[0], max_dim):
                    for c in cuts(s2[1], max_dim):
                        n, m = r[1] - r[0], c[1] - c[0]
                        st["blocks"][r, c] = {
                            "L": matrix_eps * torch.eye(n),
                            "R": matrix_eps * torch.eye(m),
                            "Lh": torch.eye(n),
                            "Rh": torch.eye(m),
                        }
            self.state[p] = st

    @torch.no_grad()
    def step(self):
        self.k += 1
        k = self.k
        for p in self.params:
            G = p.grad.clone()
            st = self.state[p]
            s2 = matrix_view_shape(p.shape)
            if s2 is None:
                Gt = G
            else:
                G2 = G.reshape(s2)
                P = torch.zeros_like(G2)
                for (r, c), b in st["blocks"].items():
                    Gb = G2[r[0] : r[1], c[0] : c[1]]
                    if k % self.T1 == 0:
                        b["L"] = self.beta * b["L"] + (1 - self.beta) * Gb @ Gb.T
                        b["R"] = self.beta * b["R"] + (1 - self.beta) * Gb.T @ Gb
                    if k % self.T2 == 0:
                        b["Lh"] = inv_fourth_root(b["L"], self.meps)
                        b["Rh"] = inv_fourth_root(b["R"], self.meps)
                    P[r[0] : r[1], c[0] : c[1]] = b["Lh"] @ Gb @ b["Rh"]
                P = P.reshape(G.shape)
                Gt = P * (G.norm() / P.norm()) if P.norm() > 0 else torch.zeros_like(P)
            if self.base == "adamw":
                b1, b2 = self.betas
                p.mul_(1 - self.lr * self.wd)
                st["m"] = b1 * st["m"] + (1 - b1) * Gt
                st["v"] = b2 * st["v"] + (1 - b2) * Gt * Gt
                mhat = st["m"] / (1 - b1**k)
                vhat = st["v"] / (1 - b2**k)
                p.sub_(self.lr * mhat / (vhat.sqrt() + self.eps))
            else:
                d = Gt + self.wd * p
                st["buf"] = d.clone() if st["buf"] is None else self.mu * st["buf"] + d
                p.sub_(self.lr * (d + self.mu * st["buf"] if self.nesterov else st["buf"]))
