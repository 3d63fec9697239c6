"""Paper-style PNG figures (matplotlib).

Why PNGs beside the interactive figure: PNGs go into papers and slides and render anywhere
(the overview is also embedded in the report for readers without JavaScript); the report's
interactive figure (``_views``) lets a reader pick a view and hover for exact values. Both
draw the same numbers from the analysis; neither computes statistics. Figures are made with ``matplotlib.figure.Figure``
directly, not pyplot, so drawing them needs no backend and importing traitwatch never
switches the user's matplotlib backend (a notebook keeps its inline plots).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from traitwatch.analysis import StudyAnalysis

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def trait_colors(traits: list[str]) -> dict[str, str]:
    """One colour per distinct trait, in sorted order (callers pass one name per curve: with
    repeats counted, every trait got the colour of its last position)."""
    return {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(sorted(set(traits)))}


def _leader_traits(analysis: StudyAnalysis, leads: list[tuple[str, str]]) -> set[str]:
    return {a for a, _ in leads}


def run_png(analysis: StudyAnalysis, run_id: str, judge: str, path: Path, leads: list[tuple[str, str]]) -> Path | None:
    """Trait curves of one run under one judge, with CI bands, onsets and held-out loss."""
    curves = [c for c in analysis.curves if c.run_id == run_id and c.judge == judge]
    if not curves:
        return None
    colors = trait_colors([c.trait for c in analysis.curves])
    leaders = _leader_traits(analysis, leads)
    fig = Figure(figsize=(8, 4.2), dpi=110)
    ax = fig.subplots()
    for tc in sorted(curves, key=lambda c: c.trait):
        c = tc.curve
        style = "--" if tc.trait in leaders else "-"
        ax.plot(c.steps, c.mean, style, color=colors[tc.trait], lw=2, label=tc.trait, marker="o", ms=3)
        if c.lo is not None and c.hi is not None:
            ax.fill_between(c.steps, c.lo, c.hi, color=colors[tc.trait], alpha=0.15, lw=0)
        o = analysis.onset(run_id, judge, tc.trait)
        if o is not None and o.step is not None:
            ax.axvline(o.step, color=colors[tc.trait], ls=":", lw=1.5)
            ax.annotate(
                f"onset {tc.trait}: {o.step}",
                (o.step, 100),
                xytext=(3, -12 - 11 * sorted(colors).index(tc.trait)),
                textcoords="offset points",
                fontsize=7,
                color=colors[tc.trait],
            )
    ax.set_xlabel("training step")
    ax.set_ylabel("score (0-100)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ck = analysis.checkpoints.get(run_id, [])
    held = [(c.step, c.heldout_loss) for c in ck if c.heldout_loss is not None]
    if held:
        ax2 = ax.twinx()
        ax2.plot([h[0] for h in held], [h[1] for h in held], color="grey", lw=1, alpha=0.7, label="held-out loss")
        ax2.set_ylabel("held-out loss", color="grey")
        ax2.tick_params(axis="y", colors="grey")
    ax.legend(loc="center right", fontsize=8)
    ax.set_title(f"{run_id}  (judge: {judge})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def overview_png(analysis: StudyAnalysis, judge: str, path: Path, leads: list[tuple[str, str]], zoom_steps: int = 100) -> Path | None:
    """Paper-style grid: one panel per run (domain rows, level columns); leading traits dashed,
    others solid; a zoomed row on the first ``zoom_steps`` steps when runs are longer."""
    runs = analysis.runs
    if not runs:
        return None
    domains = sorted({r["domain"] for r in runs})
    # the three levels in their order, then named conditions in the order the runs have them
    named = [lv for lv in ("normal", "mild", "strong") if any(r["level"] == lv for r in runs)]
    levels = list(dict.fromkeys(named + [r["level"] for r in runs]))
    longest = max((int(c.curve.steps.max()) for c in analysis.curves if len(c.curve)), default=0)
    zoom = longest > zoom_steps
    nrows = len(domains) * (2 if zoom else 1)
    fig = Figure(figsize=(4 * len(levels), 2.8 * nrows), dpi=110)
    axes = fig.subplots(nrows, len(levels), squeeze=False)
    colors = trait_colors([c.trait for c in analysis.curves])
    leaders = _leader_traits(analysis, leads)
    for di, dom in enumerate(domains):
        for li, lv in enumerate(levels):
            for zi in range(2 if zoom else 1):
                ax = axes[di * (2 if zoom else 1) + zi][li]
                for r in runs:
                    if r["domain"] != dom or r["level"] != lv:
                        continue
                    for tc in analysis.curves:
                        if tc.run_id != r["run_id"] or tc.judge != judge:
                            continue
                        c = tc.curve
                        ax.plot(
                            c.steps,
                            c.mean,
                            "--" if tc.trait in leaders else "-",
                            color=colors[tc.trait],
                            lw=1.5,
                            label=tc.trait if r["seed"] == min(x["seed"] for x in runs) else None,
                            alpha=0.9,
                        )
                ax.set_ylim(-3, 103)
                if zi == 1:
                    ax.set_xlim(0, zoom_steps)
                ax.set_title(f"{dom} / {lv}" + (f" (first {zoom_steps} steps)" if zi == 1 else ""), fontsize=9)
                ax.grid(alpha=0.3)
                ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.supxlabel("training step", fontsize=9)
    fig.supylabel(f"score (judge: {judge})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
