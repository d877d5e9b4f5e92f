"""What a run measures around its optimizer, through the optimizer's step hooks — so the
harness's loop and a user's loop (:class:`~qshampoo.bench.recorder.Recorder`) measure alike:

- **What the optimizer adds at its peak** (bytes): its state plus the most temporaries one
  ``step()`` holds at once, at the second step and the first two where Shampoo's roots are due
  (its worst steps). On CUDA the allocator counts them (``max_memory_allocated``); elsewhere
  ``qshampoo.peak.TensorPeak`` counts the tensors the step creates, net of the state it replaces
  (deterministic; a LAPACK workspace inside one operator is not seen).
- **Norms**: every step's gradient norm and the update's norm over the parameters' (‖Δθ‖/‖θ‖).
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

from ..peak import TensorPeak
from ..peak import process_peak as peak_rss
from . import optimizers as optim_mod


def _state_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of ``opt``'s state (replaced ones count as freed, ``TensorPeak``)."""
    return [t for t in tree_leaves(list(opt.state.values())) if isinstance(t, torch.Tensor)]


# --------------------------------------------------------------------------------------------
# The optimizer's steps
# --------------------------------------------------------------------------------------------


def _norm(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)).float()))


class StepWatch:
    """Measure every ``step()`` of ``opt`` (see the module's docstring). ``calls`` counts the
    steps seen (restored on resume, so the same steps are measured); ``samples`` holds the
    memory measurements, ``grad_norms`` and ``update_ratios`` one value per step."""

    def __init__(self, opt: torch.optim.Optimizer, name: str = "", norms: bool = True):
        self.opt, self.name, self.norms = opt, name, norms
        self.calls = 0
        self.rss_before: int | None = None  # the process's high-water mark before step 1
        self.samples: list[dict] = []
        self.grad_norms: list[float] = []
        self.update_ratios: list[float] = []
        self._before: list[torch.Tensor] | None = None
        self._mode: TensorPeak | None = None
        self._state0 = 0
        self._handles = [
            opt.register_step_pre_hook(self._pre),
            opt.register_step_post_hook(self._post),
        ]

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.opt.param_groups for p in g["params"] if p.requires_grad]

    def _measured(self, call: int) -> bool:
        t2 = self.opt.param_groups[0].get("root_interval")
        return call == 2 or (isinstance(t2, int) and call in (t2, 2 * t2))

    def _pre(self, opt, args, kwargs) -> None:
        self.calls += 1
        if self.calls == 1:
            self.rss_before = peak_rss()
        params = self._params()
        if self.norms:  # the gradient is read after the step: a closure may compute it inside
            self._before = [p.detach().clone() for p in params]
        if self._measured(self.calls):
            self._state0 = optim_mod.state_bytes(self.name, opt)["total"]
            device = params[0].device if params else torch.device("cpu")
            spec = optim_mod.REGISTRY.get(self.name)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                self._mode = ("cuda", device, torch.cuda.memory_allocated(device))
            elif spec is not None and not spec.watchable:
                self._mode = ("state only",)  # a compiled step: its temporaries are not seen
            else:
                self._mode = TensorPeak(existing=_state_tensors(opt))
                self._mode.__enter__()

    def _post(self, opt, args, kwargs) -> None:
        if self._mode is not None:
            if isinstance(self._mode, TensorPeak):
                self._mode.__exit__(None, None, None)
                temp = self._mode.peak
            elif self._mode[0] == "cuda":
                _, device, before = self._mode
                torch.cuda.synchronize(device)
                temp = torch.cuda.max_memory_allocated(device) - before
            else:
                temp = 0
            self._mode = None
            state = optim_mod.state_bytes(self.name, opt)["total"]
            # the step's temporaries on top of the state it started with; at the first step
            # the state itself is created inside the step and counted with the temporaries
            self.samples.append({"step": self.calls, "state": state, "peak": self._state0 + temp})
        if self._before is not None:
            params = self._params()
            self.grad_norms.append(_norm([p.grad for p in params if p.grad is not None]))
            delta = torch._foreach_sub([p.detach() for p in params], self._before)
            self._before = None
            size = _norm([p.detach() for p in params])
            self.update_ratios.append(_norm(delta) / size if size > 0 else float("nan"))

    def optimizer_peak(self) -> dict[str, int | None]:
        """``{"peak", "state", "workspace"}`` bytes: the most the optimizer held at a measured
        step, its state then, and the difference (the step's temporaries)."""
        if not self.samples:
            return {"peak": None, "state": None, "workspace": None}
        worst = max(self.samples, key=lambda s: s["peak"])
        return {**worst, "workspace": max(0, worst["peak"] - worst["state"])}

    _STATE = ("calls", "rss_before", "samples", "grad_norms", "update_ratios")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])
