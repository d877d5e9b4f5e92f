"""``load_state_dict`` under mutated state dicts (issue 22): each mutation is either refused
with a ``ValueError``/``TypeError`` and the optimizer left exactly as it was, or loaded with
later steps identical to those after loading the unmutated state dict.

The mutations are damage, not edits: dropped, extra or retyped keys, tensors of another shape
or dtype, non-finite values, one rank's blocks, swapped groups or parameter states, another
format version, flipped bytes in the 4-bit codes, changed values; afterwards the checksums are
kept (stale), recomputed or dropped. A value changed on purpose with recomputed checksums is a
legitimate edit (a new ``lr``, a dropped parameter state), so values are changed only under
stale checksums, and whole parameter states and their preconditioners are never dropped.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import qshampoo
from qshampoo.checkpoint import with_checksums
from tests.robust_utils import (  # noqa: F401 - single_thread is an autouse fixture
    same,
    single_thread,
    snapshot,
)

SHAPES = ((20, 12), (9, 7), (5,), (12, 10))  # distinct: a swapped state cannot fit
KW = dict(
    quant="cholesky_ef",
    max_preconditioner_dim=16,
    min_quant_numel=64,  # the 16x16 / 12x12 factors are 4-bit, the 7x7 ones fp32
    block_size=16,
    stat_interval=1,
    root_interval=2,
    lr=1e-2,
)


def _make(seed: int, steps: int):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]
    opt = qshampoo.Shampoo(
        [{"params": params[:3]}, {"params": params[3:], "weight_decay": 0.01}], **KW
    )
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return opt, params


@functools.lru_cache(maxsize=1)
def _saved():
    """A state dict to mutate and one to start the target optimizers from (copies)."""
    (opt, _), (other, _) = _make(0, 3), _make(1, 2)
    return copy.deepcopy(opt.state_dict()), copy.deepcopy(other.state_dict())


def _paths(obj, path=()):
    """``(path, value)`` of every node below ``obj`` (dicts and lists)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        yield (*path, k), v
        if isinstance(v, (dict, list)):
            yield from _paths(v, (*path, k))


def _parent(root, path):
    for k in path[:-1]:
        root = root[k]
    return root


def _pick(data, sd, keep):
    paths = [p for p, v in _paths(sd) if keep(p, v)]
    return data.draw(st.sampled_from(paths)) if paths else None


def _droppable(path, value) -> bool:
    # a whole parameter state, or its preconditioners, may be left out on purpose
    return not (path[0] == "state" and (len(path) == 2 or path[2:] == ("precond",)))


def drop_key(sd, data):
    path = _pick(data, sd, lambda p, v: isinstance(_parent(sd, p), dict) and _droppable(p, v))
    if path:
        del _parent(sd, path)[path[-1]]


def extra_key(sd, data):
    path = _pick(data, sd, lambda p, v: isinstance(v, dict))
    if path:
        _parent(sd, path)[path[-1]]["extra"] = data.draw(st.sampled_from([0, torch.zeros(2)]))


def reshape_tensor(sd, data):
    path = _pick(data, sd, lambda p, v: torch.is_tensor(v) and v.numel() > 1)
    if path:
        v = _parent(sd, path)[path[-1]]
        _parent(sd, path)[path[-1]] = v.flatten()[:-1].clone()


def retype_tensor(sd, data):
    path = _pick(data, sd, lambda p, v: torch.is_tensor(v))
    if path:
        v = _parent(sd, path)[path[-1]]
        dtype = torch.float64 if v.dtype != torch.float64 else torch.float32
        _parent(sd, path)[path[-1]] = v.to(dtype)


def nonfinite_value(sd, data):
    path = _pick(data, sd, lambda p, v: torch.is_tensor(v) and v.is_floating_point())
    if path:
        v = _parent(sd, path)[path[-1]].clone()
        v.view(-1)[0] = data.draw(st.sampled_from([float("nan"), float("inf")]))
        _parent(sd, path)[path[-1]] = v


def wrong_type(sd, data):
    path = _pick(data, sd, lambda p, v: True)
    if path:
        v = _parent(sd, path)[path[-1]]
        new = data.draw(st.sampled_from(["x", None, [1], {"a": 1}, 1.5, -1]))
        if type(new) is type(v) and new == v:
            new = "x" if v != "x" else None
        _parent(sd, path)[path[-1]] = new


def truncate_list(sd, data):
    path = _pick(data, sd, lambda p, v: isinstance(v, list) and len(v) > 0)
    if path:
        del _parent(sd, path)[path[-1]][-1]


def _states(sd) -> dict:
    """The parameter states an earlier mutation left in place (as dicts)."""
    states = sd.get("state")
    if not isinstance(states, dict):
        return {}
    return {i: s for i, s in states.items() if isinstance(s, dict)}


def one_ranks_blocks(sd, data):
    held = {i: s for i, s in _states(sd).items() if isinstance(s.get("precond"), list)}
    if held:
        i = data.draw(st.sampled_from(sorted(held, key=repr)))
        blocks = held[i]["precond"]
        kept = data.draw(st.sets(st.integers(0, max(len(blocks) - 1, 0)), max_size=len(blocks)))
        held[i]["precond"] = {str(b): blocks[b] for b in sorted(kept) if b < len(blocks)}


def swap_groups(sd, data):
    if isinstance(sd.get("param_groups"), list):
        sd["param_groups"].reverse()


def swap_states(sd, data):
    states = _states(sd)
    if len(states) >= 2:
        a, b = data.draw(st.permutations(sorted(states, key=repr)))[:2]
        sd["state"][a], sd["state"][b] = states[b], states[a]


def format_version(sd, data):
    sd["format_version"] = data.draw(st.sampled_from([1, 3, None, "2", -2]))


def flip_code_byte(sd, data):
    path = _pick(data, sd, lambda p, v: torch.is_tensor(v) and v.dtype == torch.uint8)
    if path:
        v = _parent(sd, path)[path[-1]].clone()
        k = data.draw(st.integers(0, v.numel() - 1))
        v.view(-1)[k] ^= data.draw(st.integers(1, 255))
        _parent(sd, path)[path[-1]] = v


def change_value(sd, data):
    path = _pick(data, sd, lambda p, v: type(v) in (int, float) or torch.is_tensor(v))
    if path:
        v = _parent(sd, path)[path[-1]]
        _parent(sd, path)[path[-1]] = v + 1 if not torch.is_tensor(v) else v.clone().add_(1)


#: mutations that break the structure (any checksum handling), and value changes (which are
#: only damage while the checksums are stale)
STRUCTURAL = [
    drop_key,
    extra_key,
    reshape_tensor,
    retype_tensor,
    nonfinite_value,
    wrong_type,
    truncate_list,
    one_ranks_blocks,
    swap_groups,
    swap_states,
    format_version,
]
VALUES = [flip_code_byte, change_value]


def _known(snap: list, ref: list) -> list:
    """``snap`` with only the group keys ``ref`` has: a key unknown to the optimizer (as a
    scheduler's ``initial_lr``) is kept by a load, as torch.optim keeps it."""
    return [
        {k: v for k, v in x.items() if k in y} if isinstance(x, dict) else x
        for x, y in zip(snap, ref, strict=True)
    ]


def _step(opt, params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()


@pytest.mark.slow
@settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_mutated_state_dicts_are_refused_unchanged_or_loaded_identically(data):
    original, start = _saved()
    ops = data.draw(st.lists(st.sampled_from(STRUCTURAL + VALUES), min_size=1, max_size=3))
    sd = copy.deepcopy(original)
    for op in ops:
        op(sd, data)
    if not any(op in VALUES for op in ops):
        checksums = data.draw(st.sampled_from(["stale", "recomputed", "dropped"]))
        if checksums == "recomputed":
            try:
                sd = with_checksums(sd)
            except Exception:  # too damaged to checksum: load it as it is
                pass
        elif checksums == "dropped":
            sd.pop("checksums", None)

    opt, params = _make(2, 0)
    opt.load_state_dict(copy.deepcopy(start))
    before = snapshot(opt)
    try:
        opt.load_state_dict(sd)
    except (ValueError, TypeError) as e:
        event(f"refused: {type(e).__name__}")
        assert same(snapshot(opt), before), f"a refused load changed the optimizer ({ops})"
        return

    # loaded: it must behave as the unmutated state dict does
    event("loaded")
    ref, ref_params = _make(2, 0)
    ref.load_state_dict(copy.deepcopy(original))
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        grads = [torch.randn(s, generator=g) for s in SHAPES]
        _step(opt, params, grads)
        _step(ref, ref_params, grads)
    assert same(_known(snapshot(opt), snapshot(ref)), snapshot(ref)), (
        f"accepted {ops}, and it steps differently"
    )
    for p, q in zip(params, ref_params, strict=True):
        assert torch.equal(p, q)
