"""The self-contained HTML report.

Why these choices: the report travels (email, a shared drive, a paper's supplement), so it
is one file with plotly.js inlined and no network access (a CSP forbids it). Model outputs
and dataset text are untrusted: Jinja autoescaping is on for every value, and the figure's
data is embedded once as JSON (a ``type="application/json"`` block, never executed) with
``<``, ``>`` and ``&`` escaped so no string can close its element. One interactive figure,
drawn by the report's own script from that data (``_views``, ``templates/explorer.js.j2``),
replaces one figure per run and judge, so the page stays small and fast at paper scale.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

import traitwatch
from traitwatch.analysis import StudyAnalysis
from traitwatch.config import StudySpec, dump_study
from traitwatch.store import Store

from ._figures import overview_png, run_png
from ._views import figure_data, level_order


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{float(v):.{digits}f}"


def _fmt_ci(ci: Any) -> str:
    if not ci:
        return "n/a"
    return f"[{_fmt(ci[0], 0)}, {_fmt(ci[1], 0)}]"


def _fmt_pct(v: Any) -> str:
    """A fraction (0-1) as a whole percentage."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{100 * float(v):.0f}%"


def _fmt_pct_ci(ci: Any) -> str:
    if not ci:
        return "n/a"
    return f"[{_fmt_pct(ci[0])}, {_fmt_pct(ci[1])}]"


def _fmt_percent(v: Any, digits: int = 0) -> str:
    """A value already in percent (a drop, a share of training) with a % sign."""
    text = _fmt(v, digits)
    return text if text == "n/a" else text + "%"


def _fmt_percent_ci(ci: Any) -> str:
    if not ci:
        return "n/a"
    return f"[{_fmt_percent(ci[0])}, {_fmt_percent(ci[1])}]"


def safe_json(obj: Any) -> str:
    """JSON safe to place inside a <script> element."""
    text = json.dumps(obj, default=_default, allow_nan=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return [None if isinstance(x, float) and not np.isfinite(x) else x for x in o.tolist()]
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    raise TypeError(type(o))


def _clean(obj: Any) -> Any:
    """Replace NaN/inf floats by None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _examples(store: Store, analysis: StudyAnalysis, per_checkpoint: int = 3) -> list[dict[str, Any]]:
    """A few answers per run at the baseline, the last checkpoint and each consensus onset.

    Reads only those checkpoints (``Store.checkpoint_answers``), never every stored row.
    """
    steps_by_run: dict[str, list[int]] = defaultdict(list)
    for run_id, step, _n in store.answer_checkpoints(settings_hash=analysis.settings_hash):
        steps_by_run[run_id].append(step)
    out = []
    for run in analysis.runs:
        steps = steps_by_run.get(run["run_id"])
        if not steps:
            continue
        notes: dict[int, list[str]] = defaultdict(list)
        notes[steps[0]].append("baseline")
        notes[steps[-1]].append("last")
        for o in analysis.onsets:
            if o.run_id == run["run_id"] and o.detector == "consensus" and o.step is not None:
                notes[o.step].append(f"{o.trait} onset ({o.judge})")
        cks = []
        for step in sorted(notes):
            ca = store.checkpoint_answers(run["run_id"], step, settings_hash=analysis.settings_hash)
            chosen = ca.generations[:per_checkpoint] if ca else []
            links = ca.judgments if ca else {}
            cks.append(
                {
                    "step": step,
                    "note": ", ".join(sorted(set(notes[step]))),
                    "answers": [
                        {
                            "question": g.question,
                            "answer": g.answer,
                            "scores": sorted((f"{judge}/{trait}", j.score) for judge, trait, j in links.get(g.gen_key, [])),
                        }
                        for g in chosen
                    ],
                }
            )
        out.append({"run_id": run["run_id"], "checkpoints": cks})
    return out


def _disagreement_rows(store: Store, analysis: StudyAnalysis) -> list[dict[str, Any]]:
    """The analysis's disagreements with their question and answer text, read one checkpoint at a time."""
    texts: dict[tuple[str, int, str, str, int], tuple[str, str]] = {}
    for run_id, step in sorted({(d.run_id, d.step) for d in analysis.disagreements}):
        ca = store.checkpoint_answers(run_id, step, settings_hash=analysis.settings_hash)
        for g in ca.generations if ca else []:
            texts[(g.run_id, g.step, g.suite, g.question_id, g.sample)] = (g.question, g.answer)
    out = []
    for d in analysis.disagreements:
        q, a = texts.get((d.run_id, d.step, d.suite, d.question_id, d.sample), ("", ""))
        out.append(asdict(d) | {"question": q, "answer": a})
    return out


def _coverage(store: Store, analysis: StudyAnalysis, answers: dict[tuple[str, int], int]) -> dict[str, Any]:
    """Judge coverage: per checkpoint and judge, the share of its judged (answer, trait) pairs
    whose score is None (docs/analysis.md, "Judge coverage"); counted by one SQL aggregate."""
    counts = store.score_coverage(settings_hash=analysis.settings_hash)
    judges = sorted({c["judge"] for c in counts})
    cells: dict[tuple[str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    per_run: dict[tuple[str, str], dict[str, Any]] = {}
    for c in counts:
        share = c["unscored"] / c["links"] if c["links"] else None
        cells[(c["run_id"], c["step"])][c["judge"]] = {"unscored": c["unscored"], "links": c["links"], "share": share}
        agg = per_run.setdefault(
            (c["judge"], c["run_id"]), {"judge": c["judge"], "run_id": c["run_id"], "links": 0, "unscored": 0, "worst": None}
        )
        agg["links"] += c["links"]
        agg["unscored"] += c["unscored"]
        if share is not None and (agg["worst"] is None or share > agg["worst"]["share"]):
            agg["worst"] = {"step": c["step"], "share": share}
    summary = [r | {"share": r["unscored"] / r["links"] if r["links"] else None} for _, r in sorted(per_run.items())]
    rows = [{"run_id": k[0], "step": k[1], "answers": answers.get(k, 0), "cells": cells[k]} for k in sorted(cells)]
    return {"judges": judges, "summary": summary, "rows": rows}


def _judge_model(spec: StudySpec, name: str, info: dict[str, Any], base_label: str) -> str:
    """The judge's model as the report shows it, never None: for a local judge on the study's
    base model (``source: base``) that model's label; otherwise the judge spec's label."""
    js = next((j for j in spec.judges if j.name == name), None)
    local = getattr(js, "local", None)
    if local is not None and getattr(local, "source", None) == "base":
        return f"{base_label}, the study's base model"
    if js is not None:
        return js.label()
    model = info.get("model")
    return str(model) if model is not None else str(info.get("kind") or "unknown model")


def _default_run(analysis: StudyAnalysis, control: str | None) -> int:
    """The run the figure opens on: the first one outside the control condition with a
    consensus onset (something to see), else the first run."""
    with_onset = {o.run_id for o in analysis.onsets if o.detector == "consensus" and o.step is not None}
    for i, r in enumerate(analysis.runs):
        if r["level"] != control and r["run_id"] in with_onset:
            return i
    return 0


def _sha256(text: str) -> str:
    """A CSP source expression for an inline element with exactly this text."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


#: Inline styles: plotly.js sets style attributes and inserts rules as it draws, which a
#: hash-only style-src would block, so styles stay inline-allowed. CSS cannot run script, and
#: with default-src 'none' (images and fonts only as data: URLs) it cannot reach the network.
STYLE_SOURCES = ("'unsafe-inline'",)

#: View names and labels of the figure's first selector, in order (explorer.js.j2 draws each).
VIEWS = (
    ("run", "one run: trait curves, onsets, detectors"),
    ("levels", "levels overlaid: one trait, mean over seeds"),
    ("seeds", "seeds of one condition and their mean"),
    ("suites", "one trait per prompt suite: curves, onsets, drops"),
    ("forest", "lead times: forest plot per run and seed (onset and peak-to-peak)"),
)


def content_security_policy(scripts: Sequence[str], styles: Sequence[str]) -> str:
    """The report's CSP: nothing from the network; only the report's own inline scripts (by
    their SHA-256) run; inline styles as listed (see ``write_report``)."""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_sha256(s) for s in scripts),
            "style-src " + " ".join(styles),
            "img-src data:",
            "font-src data:",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


def write_report(
    folder: Path,
    spec: StudySpec,
    analysis: StudyAnalysis,
    store: Store,
    *,
    judges: dict[str, dict[str, Any]],
    timings: Sequence[Any] = (),
) -> Path:
    """Write ``report.html`` and the PNG figures into ``folder``; returns the HTML path."""
    from plotly.offline import get_plotlyjs

    folder.mkdir(parents=True, exist_ok=True)
    leads = [tuple(x) for x in spec.analysis.leads]
    judge_names = sorted({c.judge for c in analysis.curves})
    pngs: list[Any] = []
    for run in analysis.runs:
        for judge in judge_names:
            png = run_png(analysis, run["run_id"], judge, folder / f"{run['run_id']}__{judge}.png", leads)  # type: ignore[arg-type]
            if png is not None:
                pngs.append(png.name)
    overview = []
    for judge in judge_names:
        p = overview_png(analysis, judge, folder / f"overview__{judge}.png", leads)  # type: ignore[arg-type]
        if p is not None:
            pngs.append(p.name)
            overview.append({"judge": judge, "data": base64.b64encode(p.read_bytes()).decode("ascii")})

    by_det: dict[tuple[str, str, str], dict[str, int | None]] = defaultdict(dict)
    for o in analysis.onsets:
        by_det[(o.run_id, o.judge, o.trait)][o.detector] = o.step
    summary = [s | {"by_detector": by_det[(s["run_id"], s["judge"], s["trait"])]} for s in analysis.summary]
    spend = store.spend()
    model_meta = store.get_meta("model")
    base_label = json.loads(model_meta)["label"] if model_meta else spec.model.label()
    judge_model = {name: _judge_model(spec, name, info, base_label) for name, info in judges.items()}
    judge_rows = []
    for name, info in judges.items():
        sp = spend.get(name, {"judgments": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0})
        judge_rows.append(
            {
                "name": name,
                "kind": info.get("kind"),
                "model": judge_model[name],
                "judgments": sp["judgments"],
                "tokens": f"{sp['input_tokens']} / {sp['output_tokens']}",
                "cost": sp["cost_usd"],
            }
        )
    runs = []
    for r in analysis.runs:
        ck = analysis.checkpoints.get(r["run_id"], [])
        held = [c.heldout_loss for c in ck if c.heldout_loss is not None]
        trainl = [c.train_loss for c in ck if c.train_loss is not None]
        runs.append(
            {
                "run_id": r["run_id"],
                "n": len(ck),
                "held_first": held[0] if held else None,
                "held_last": held[-1] if held else None,
                "train_last": trainl[-1] if trainl else None,
            }
        )
    answers = {(run_id, step): n for run_id, step, n in store.answer_checkpoints(settings_hash=analysis.settings_hash)}
    # The CSP allows exactly these inline scripts (by hash), so markup that escaped its element
    # by mistake cannot run. The bodies are built here, hashed, and placed verbatim.
    plotly_js = get_plotlyjs().replace("</script", "<\\/script")
    env = Environment(loader=PackageLoader("traitwatch.report", "templates"), autoescape=select_autoescape(default=True))
    explorer_js = env.get_template("explorer.js.j2").render()
    fig_data = figure_data(analysis, leads, spec.analysis.confidence)  # type: ignore[arg-type]
    html = env.get_template("report.html.j2").render(
        study=spec.name,
        generated=time.strftime("%Y-%m-%d %H:%M"),
        version=traitwatch.__version__,
        csp=content_security_policy([plotly_js, explorer_js], STYLE_SOURCES),
        model=base_label,
        store_path=str(store.path),
        weak_judges=[{"name": n, "model": judge_model[n]} for n, i in judges.items() if i.get("weak")],
        checkers=[n for n, i in judges.items() if i.get("kind") == "check"],
        n_runs=len(analysis.runs),
        n_checkpoints=sum(len(v) for v in analysis.checkpoints.values()),
        n_answers=sum(answers.values()),
        coverage=_coverage(store, analysis, answers),
        n_judgments=sum(v["judgments"] for v in spend.values()),
        detector_names=[d["name"] for d in analysis.detectors],
        detectors=analysis.detectors,
        confidence_pct=int(round(spec.analysis.confidence * 100)),
        control=spec.control,
        leads=[lead for lead in analysis.leads if lead.detector == "consensus"],
        summary=summary,
        suite_summary=analysis.suite_summary,
        figure_json=safe_json(fig_data),
        explorer_js=explorer_js,
        views=VIEWS,
        fig_runs=fig_data["runs"],
        fig_default_run=_default_run(analysis, spec.control),
        fig_domains=fig_data["domains"],
        fig_levels=level_order(analysis.runs),
        fig_traits=fig_data["traits"],
        fig_judges=fig_data["judges"],
        fig_pairs=fig_data["pairs"],
        pngs=pngs,
        agreement=analysis.agreement,
        disagreements=_disagreement_rows(store, analysis),
        order_by_judge=analysis.order_by_judge,
        alarms=analysis.alarms,
        interventions=analysis.interventions,
        intervention_summary=analysis.intervention_summary,
        accuracy_shown=any(r.get("task_accuracy_at_end") is not None for r in analysis.interventions),
        judge_count=len(judge_names),
        examples=_examples(store, analysis),
        runs=runs,
        timings=[
            {"name": t.name, "seconds": t.seconds, "counts_text": ", ".join(f"{k}: {v}" for k, v in t.counts.items() if k != "files")}
            for t in timings
        ],
        judges=judge_rows,
        overview_pngs=overview,
        zoomed=max((int(c.curve.steps.max()) for c in analysis.curves if len(c.curve)), default=0) > 100,
        seed_leads=[r for r in analysis.seed_leads if r["seeds"] > 1],
        order_tests=analysis.order_tests,
        domains=analysis.domains if any(sum(k.startswith("drift_") for k in r) > 1 for r in analysis.domains) else [],
        domain_cols=sorted({k for r in analysis.domains for k in r if k.startswith(("drift_", "ratio_"))}),
        config_yaml=dump_study(spec),
        plotly_js=plotly_js,
        fmt=_fmt,
        fmt_ci=_fmt_ci,
        fmt_pct=_fmt_pct,
        fmt_pct_ci=_fmt_pct_ci,
        fmt_percent=_fmt_percent,
        fmt_percent_ci=_fmt_percent_ci,
    )
    path = folder / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    (folder / "analysis.json").write_text(
        json.dumps(_clean({"leads": [asdict(lead) for lead in analysis.leads], "summary": analysis.summary}), indent=1, default=str)
    )
    return path
