"""The verdict paragraph: built from the measured numbers by the fixed rules below, with no
claim written in advance."""

from __future__ import annotations

import math
from collections.abc import Callable

from .summary import fmt_bytes, metric_scale

# --------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------

LABELS = {
    "adamw": "AdamW",
    "sgd": "SGD",
    "shampoo": "32-bit Shampoo",
    "shampoo4bit": "4-bit Shampoo (CQ+EF)",
    "shampoo4bit-naive": "naive 4-bit Shampoo (VQ)",
    "shampoo4bit-eigen": "eigenvector 4-bit Shampoo",
    "shampoo4bit-cholesky": "4-bit Shampoo (CQ, no EF)",
    "shampoo4bit-auto": "adaptive 4/8-bit Shampoo (CQ+EF, bits='auto')",
    "shampoo8bit": "8-bit Shampoo (CQ+EF)",
    "shampoo8bit-cholesky": "8-bit Shampoo (CQ, no EF)",
}


def label(name: str) -> str:
    return LABELS.get(name, name)


def compare_means(a: dict, b: dict) -> tuple[float, float | None]:
    """``(mean_a - mean_b, noise)``; ``noise`` is twice the standard error of the difference
    (about a 95% band), or ``None`` with fewer than two seeds on either side."""
    diff = a["mean"] - b["mean"]
    if a["std"] is None or b["std"] is None:
        return diff, None
    return diff, 2.0 * math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])


def _diff_phrase(meta: dict, a: dict, b: dict, other: str) -> str:
    scale = metric_scale(meta)
    unit = " points" if meta.get("percent") else ""
    diff, noise = compare_means(a, b)
    better = diff > 0 if meta["higher_is_better"] else diff < 0
    size = abs(diff) * scale
    if size == 0:
        core = f"the same as {other}"
    else:
        core = f"{size:.2f}{unit} {'better' if better else 'worse'} than {other}"
    if noise is None:
        return core + " (one seed: no noise estimate)"
    within = abs(diff) <= noise
    return core + (f" ({'within' if within else 'beyond'} seed noise, ±{noise * scale:.2f}{unit})")


def verdict(meta: dict, summary: dict) -> str:
    """A short paragraph built from the measured numbers only."""
    if not summary:
        return "No run finished."
    hib = meta["higher_is_better"]
    scale = metric_scale(meta)
    unit = "%" if meta.get("percent") else ""
    finite = {n: s for n, s in summary.items() if math.isfinite(s["metric"]["mean"])}
    parts = []
    seeds = len(meta["seeds"])
    if finite:
        best = (max if hib else min)(finite, key=lambda n: finite[n]["metric"]["mean"])
        parts.append(
            f"After {meta['steps']} steps ({seeds} seed{'s' if seeds > 1 else ''}), the best final "
            f"{meta['metric_name']} was {label(best)}'s "
            f"({finite[best]['metric']['mean'] * scale:.2f}{unit})."
        )
    baseline = next((n for n in summary if not n.startswith("shampoo")), None)
    reference = "shampoo" if "shampoo" in summary else None
    four_bit = [n for n in summary if n.startswith("shampoo4bit")]
    for name in ["shampoo", *four_bit] if reference else four_bit:
        if name not in finite:
            continue
        comps = []
        if reference and name != reference and reference in finite:
            comps.append(
                _diff_phrase(
                    meta, finite[name]["metric"], finite[reference]["metric"], label(reference)
                )
            )
        if baseline and baseline in finite:
            comps.append(
                _diff_phrase(
                    meta, finite[name]["metric"], finite[baseline]["metric"], label(baseline)
                )
            )
        if comps:
            parts.append(f"{label(name)} was " + " and ".join(comps) + ".")
    # How much of 32-bit Shampoo's gain over the baseline a 4-bit variant keeps.
    if reference in finite and baseline in finite:
        gain, noise = compare_means(finite[reference]["metric"], finite[baseline]["metric"])
        gain = gain if hib else -gain
        if gain > 0 and (noise is None or gain > noise):
            for name in four_bit:
                if name in finite:
                    own = finite[name]["metric"]["mean"] - finite[baseline]["metric"]["mean"]
                    own = own if hib else -own
                    share = f"{100 * own / gain:.0f}%" if own > 0 else "none"
                    parts.append(
                        f"{label(name)} kept {share} of 32-bit Shampoo's gain "
                        f"over {label(baseline)}."
                    )
        else:
            parts.append(
                f"32-bit Shampoo did not beat {label(baseline)} beyond seed noise here, so this "
                "run cannot show what the 4-bit variants keep of a gain."
            )
    # Memory.
    if reference:
        ref_pre = summary[reference]["state_bytes"]["preconditioners"]
        for name in four_bit:
            pre = summary[name]["state_bytes"]["preconditioners"]
            if pre and ref_pre:
                parts.append(
                    f"{label(name)}'s preconditioners took {fmt_bytes(pre)} against "
                    f"{fmt_bytes(ref_pre)} in 32 bits ({ref_pre / pre:.1f}× less)."
                )
    if baseline:
        base_total = summary[baseline]["state_bytes"]["total"]
        if base_total:
            ratios = ", ".join(
                f"{label(n)} {summary[n]['state_bytes']['total'] / base_total:.2f}×"
                for n in summary
                if n != baseline
            )
            if ratios:
                parts.append(
                    f"Total optimizer state relative to {label(baseline)} "
                    f"({fmt_bytes(base_total)}): {ratios}."
                )
    rss = {n: s["peak_rss_bytes"]["mean"] for n, s in summary.items()}
    lo, hi = min(rss, key=rss.get), max(rss, key=rss.get)
    if lo != hi:
        parts.append(
            f"Peak process memory ranged from {fmt_bytes(rss[lo])} ({label(lo)}) to "
            f"{fmt_bytes(rss[hi])} ({label(hi)})."
        )
    gpu = {n: s["cuda_peak_bytes"]["mean"] for n, s in summary.items() if s["cuda_peak_bytes"]}
    if len(gpu) > 1:
        glo, ghi = min(gpu, key=gpu.get), max(gpu, key=gpu.get)
        parts.append(
            f"CUDA peak memory ranged from {fmt_bytes(gpu[glo])} ({label(glo)}) to "
            f"{fmt_bytes(gpu[ghi])} ({label(ghi)})."
        )
    # Time.
    if baseline:
        base_ms = summary[baseline]["ms_per_step"]["mean"]
        times = ", ".join(
            f"{label(n)} {s['ms_per_step']['mean'] / base_ms:.2f}×"
            for n, s in summary.items()
            if n != baseline
        )
        if times:
            parts.append(
                f"Time per step relative to {label(baseline)} ({base_ms:.1f} ms): {times}."
            )
    # Stability.
    parts.append(stability_sentence(summary))
    qe = {n: s["quant_error"] for n, s in summary.items() if s["quant_error"]["first"] is not None}
    if qe:
        parts.append(
            "Mean relative quantization error of the 4-bit factors, first → last evaluation: "
            + ", ".join(f"{label(n)} {q['first']:.3f} → {q['last']:.3f}" for n, q in qe.items())
            + "."
        )
    return " ".join(parts)


def stability_sentence(summary: dict[str, dict], name: Callable[[str], str] = label) -> str:
    """The stability events of each entry of ``summary`` (summed over its seeds), shown by
    ``name(key)``; or the sentence that there were none."""
    troubled = []
    for k, s in summary.items():
        st = s["stability"]
        events = {
            "non-finite steps": st["nonfinite_losses"] + st["optimizer_nonfinite_steps"],
            "loss spikes": st["loss_spikes"],
            "root failures": st["root_failures"],
            "Cholesky failures": st["cholesky_failures"],
            "diverged runs": st["diverged_runs"],
        }
        found = [f"{v} {what}" for what, v in events.items() if v]
        if found:
            troubled.append(f"{name(k)}: {', '.join(found)}")
    if troubled:
        return "Stability events (all seeds): " + "; ".join(troubled) + "."
    return "No run had a non-finite step, a loss spike, a root or Cholesky failure, or diverged."
