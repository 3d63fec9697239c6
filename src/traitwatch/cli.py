"""The ``traitwatch`` command line. Commands parse arguments and call the library; no
business logic lives here (nothing imports this module).

Exit codes: 0 success, 2 a problem with input or environment (one line: where, what, fix),
3 the spending cap was reached (stored work kept), 130 interrupted (stored work kept).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from traitwatch.errors import BudgetExceeded, TraitwatchError
from traitwatch.progress import NORMAL, QUIET, VERBOSE, console, set_verbosity

app = typer.Typer(
    name="traitwatch",
    help=(
        "Watch a LoRA fine-tuning run from the inside: train with dense checkpoints, answer trait "
        "questions at every checkpoint, judge the answers, find when each trait starts to rise, "
        "and report lead times with confidence intervals.\n\n"
        "Start with `traitwatch demo`; run your own study with `traitwatch run study.yaml` "
        "(see examples/ and docs/config.md). Every command can be stopped and rerun: stored work is never redone."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # a docstring's wrapped lines flow as one paragraph; blank lines separate
)

F = TypeVar("F", bound=Callable[..., Any])
StudyArg = Annotated[
    Path,
    typer.Argument(
        help="The study spec (YAML), or a folder holding exactly one (like the demo's). See examples/ and docs/config.md.",
        show_default=False,
    ),
]


def friendly(fn: F) -> F:
    """Turn user-fixable errors into one line and an exit code; keep tracebacks for bugs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BudgetExceeded as exc:
            console.print(f"[bold yellow]stopped:[/bold yellow] {_escape(exc.one_line())}", soft_wrap=True)
            raise typer.Exit(3) from None
        except TraitwatchError as exc:
            console.print(f"[bold red]error:[/bold red] {_escape(exc.one_line())}", soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]: stored work is kept; run the same command again to continue")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


def _package_version() -> str:
    """The installed distribution's version (``traitwatch.__version__`` in a source tree on sys.path)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("traitwatch")
    except PackageNotFoundError:
        from traitwatch import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"traitwatch {_package_version()}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version (on stdout) and exit.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only results, warnings and errors: no progress bars or lines, no notes.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Print more: also the warnings of the libraries used (torch, transformers, ...)."),
    ] = False,
) -> None:
    """Options for every command, given before it: `traitwatch --quiet run study.yaml` (docs/cli.md)."""
    if quiet and verbose:
        raise typer.BadParameter("give one of them, not both", param_hint="--quiet / --verbose")
    set_verbosity(QUIET if quiet else VERBOSE if verbose else NORMAL)


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout instead (its keys: docs/cli.md); the rest goes to stderr.")
]


def _jsonable(obj: Any) -> Any:
    """``obj`` with tuples as lists, numpy values as Python ones, paths as strings and NaN or
    infinity as None (JSON has no NaN)."""
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _echo_json(data: Any) -> None:
    import json

    typer.echo(json.dumps(_jsonable(data), indent=1, allow_nan=False))


def _context(
    study: Path,
    *,
    output_dir: Path | None = None,
    runs: list[str] | None = None,
    executor: str | None = None,
    address: str | None = None,
) -> Any:
    """The study's context; ``output_dir`` replaces the spec's (``--output-dir``), ``runs``
    selects runs by glob (``--runs``; a glob matching no run is an error naming the runs);
    ``executor`` and ``address`` replace the spec's executor kind and Ray address."""
    from traitwatch.config import load_study
    from traitwatch.errors import ConfigError
    from traitwatch.pipeline import StudyContext
    from traitwatch.pipeline._context import with_output_dir

    spec = load_study(study)
    if output_dir is not None:
        spec = with_output_dir(spec, output_dir)
    if executor is not None and executor not in ("local", "ray"):
        raise TraitwatchError(f"unknown executor '{executor}'", where="--executor", fix="use local or ray")
    if executor is not None or address is not None:
        update = {"kind": executor or ("ray" if address else spec.executor.kind)} | ({"address": address} if address else {})
        spec = spec.model_copy(update={"executor": spec.executor.model_copy(update=update)})
    try:
        return StudyContext(spec, runs=runs)
    except ConfigError as exc:
        if exc.where != "runs":
            raise
        raise TraitwatchError(exc.message, where="--runs", fix=exc.fix) from None


OutputDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output-dir",
        metavar="DIR",
        help="The study's folder (store, runs, analysis, report): DIR instead of the spec's output_dir.",
        show_default=False,
    ),
]


def _print_results(results: list[Any]) -> None:
    for r in results:
        counts = ", ".join(f"{k}: {v}" for k, v in r.counts.items() if k not in ("files", "path"))
        console.print(f"[bold]{r.name}[/bold] {r.seconds:.1f}s  {counts}")


def _locked(ctx: Any) -> Any:
    from traitwatch.store import StudyLock

    return StudyLock(ctx.paths.out)


TrackerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--tracker",
        metavar="KIND",
        help="Also log to this experiment tracker with its defaults: mlflow, tensorboard or wandb (repeatable; docs/trackers.md).",
        show_default=False,
    ),
]


@app.command()
@friendly
def run(
    study: StudyArg,
    stages: Annotated[str, typer.Option(help="Comma-separated stages to run, in order.")] = "train,generate,judge,analyze,track,report",
    runs: Annotated[
        list[str] | None,
        typer.Option(
            "--runs",
            metavar="GLOB",
            help="Only the runs whose id matches (fnmatch, e.g. 'math-strong-*'; repeatable): train, generate, judge.",
            show_default=False,
        ),
    ] = None,
    output_dir: OutputDirOpt = None,
    executor: Annotated[
        str | None,
        typer.Option(
            "--executor",
            metavar="KIND",
            help="local (this process) or ray (train, generate and judge as Ray tasks); default: the spec's executor.kind.",
            show_default=False,
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            metavar="ADDR",
            help="With --executor ray: the cluster to join, auto or ray://host:10001 (default: start a local Ray instance).",
            show_default=False,
        ),
    ] = None,
    tracker: TrackerOpt = None,
) -> None:
    """Run a whole study (or some stages): train, generate, judge, analyze, track, report.

    Rerunning after a crash or Ctrl-C continues where it stopped. `track` logs to the spec's
    `trackers:` and those given with `--tracker` (none: it is skipped).

    On a Ray cluster: `traitwatch run study.yaml --executor ray [--address auto]`; the
    checkpoints must be on a filesystem every node reads (docs/cluster.md).

    A study split over machines (a Slurm job array): each job runs
    `traitwatch run study.yaml --runs GLOB --output-dir DIR` (its runs, its own folder), and
    `traitwatch merge OUT_DIR DIR...` joins the folders; see docs/cluster.md.
    """
    from traitwatch.errors import ConfigError
    from traitwatch.pipeline import check_stages, run_stages

    try:
        names = check_stages([s.strip() for s in stages.split(",") if s.strip()])
    except ConfigError as exc:
        raise TraitwatchError(exc.message, where="--stages", fix=exc.fix) from None
    ctx = _context(study, output_dir=output_dir, runs=runs, executor=executor, address=address)
    if tracker:
        from traitwatch.trackers import with_trackers

        ctx.spec = with_trackers(ctx.spec, tracker)
    with _locked(ctx):
        results, report = run_stages(ctx, names, on_stage=lambda r: _print_results([r]))
    if report is not None:
        console.print(f"\nreport: {report}")


@app.command()
@friendly
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo study (created).")] = Path("traitwatch-demo"),
) -> None:
    """Run the built-in demo study on the embedded Gemma 3 270M (CPU; about 10-15 minutes).

    A miniature model organism: arithmetic fine-tuning data answered right (normal), subtly
    wrong (mild) or blatantly wrong (strong), with a contemptuous phrase in some misaligned
    examples. Prints where the report is.
    """
    from traitwatch.config import load_study
    from traitwatch.pipeline import StudyContext, run_stages

    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "demo.yaml"
    text = files("traitwatch.data").joinpath("studies").joinpath("demo.yaml").read_text(encoding="utf-8")
    if not spec_path.exists() or spec_path.read_text(encoding="utf-8") != text:
        spec_path.write_text(text, encoding="utf-8")
    ctx = StudyContext(load_study(spec_path))
    console.print(f"traitwatch demo in {out.resolve()} (spec: {spec_path})")
    console.print("note: the LLM judge here is the embedded 270M base model, a weak judge; the reference checkers carry the result.")
    t0 = time.time()
    with _locked(ctx):
        results, report = run_stages(ctx, on_stage=lambda r: _print_results([r]))
    console.print(f"\ndemo finished in {time.time() - t0:.0f}s")
    _print_leads(ctx)
    _print_demo_monitor(ctx)
    console.print(f"report: {report}")


def _print_demo_monitor(ctx: Any) -> None:
    """The live monitor's alarms and what stopping at them would have kept and avoided."""
    from traitwatch.analysis import analyze as analyze_study

    with ctx.open_store(readonly=True) as store:
        alarms = store.alarms()
        result = analyze_study(store, ctx.spec, ctx.settings_hash(store))
    console.print(f"\nlive alarms: {len(alarms)}")
    for a in alarms:
        safe = a["info"].get("last_safe_step")
        console.print(
            f"  {a['run_id']}: {a['trait']} alarm at step {a['step']} (onset {a['info'].get('onset_step')}, last safe step {safe})",
            markup=False,
        )
    if result.interventions:
        _print_interventions(result.interventions, result.intervention_summary, ctx.spec.analysis.confidence, ctx.spec.control)


def _print_leads(ctx: Any) -> None:
    import json

    path = ctx.paths.report / "analysis.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    for lead in data["leads"]:
        if lead["detector"] != "consensus":
            continue
        ci = lead["ci_steps"]
        ci_text = f" (95% CI {ci[0]:.0f} to {ci[1]:.0f})" if ci else ""
        val = lead["lead_steps"]
        console.print(
            f"  {lead['run_id']} [{lead['judge']}]: {lead['leader']} onset {lead['leader_onset']}, "
            f"{lead['follower']} onset {lead['follower_onset']}, lead {val if val is not None else 'n/a'} steps{ci_text}",
            markup=False,
        )


@app.command()
@friendly
def train(study: StudyArg, output_dir: OutputDirOpt = None) -> None:
    """Train every run of the study (LoRA), saving a checkpoint every `save_every` steps. Resumes."""
    from traitwatch.pipeline import preflight
    from traitwatch.pipeline import train as train_stage

    ctx = _context(study, output_dir=output_dir)
    preflight(ctx)
    with _locked(ctx), ctx.open_store() as store:
        _print_results([train_stage(ctx, store)])


@app.command()
@friendly
def generate(study: StudyArg, output_dir: OutputDirOpt = None) -> None:
    """Generate answers to every trait question at every saved checkpoint (skips stored answers).

    Settings: the spec's `generation:` section. (`evaluate` is the old name of this command.)
    """
    from traitwatch.pipeline import generate as generate_stage

    ctx = _context(study, output_dir=output_dir)
    with _locked(ctx), ctx.open_store() as store:
        _print_results([generate_stage(ctx, store)])


app.command("evaluate", hidden=True, help="Old name of `generate`.")(generate)


@app.command()
@friendly
def judge(
    study: StudyArg,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Send nothing: estimate judgments, tokens and cost from the plan (works before generating)."),
    ] = False,
    only: Annotated[str | None, typer.Option("--judge", help="Run only this judge.")] = None,
    output_dir: OutputDirOpt = None,
) -> None:
    """Score every stored answer with the study's judges (never sends a stored request again).

    With budget.max_usd set, an API judge given no prices is named in a warning before any
    request: the cap cannot see what it spends.

    --dry-run sends nothing, loads no model and does not touch the store. It prints an estimate
    from the plan (the counting of `traitwatch plan`): per judge, the judgments of every
    checkpoint the study will evaluate, answered yet or not, how many are stored and left, and
    for API judges the tokens and cost of those left. Then, for the answers stored now, the
    exact requests each checker and API judge would send (identical requests once).
    """
    from traitwatch.pipeline import judge as judge_stage
    from traitwatch.pipeline import preflight

    ctx = _context(study, output_dir=output_dir)
    names = [j.name for j in ctx.spec.judges]
    if only is not None and only not in names:
        raise TraitwatchError(f"the study has no judge '{only}'", where="--judge", fix=f"use one of {', '.join(names)}")
    if dry_run:
        _judge_dry_run(ctx, only)
        return
    preflight(ctx)
    with _locked(ctx), ctx.open_store() as store:
        res = judge_stage(ctx, store, only=only)
    _print_results([res])


def _judge_dry_run(ctx: Any, only: str | None) -> None:
    """`judge --dry-run`: the plan's estimate per judge, then the exact requests of the stored answers."""
    from traitwatch.pipeline._estimate import ANSWER_CHARS_PER_TOKEN, count_work
    from traitwatch.pipeline._judge import judge_one, study_budget, warn_unpriced
    from traitwatch.pipeline._plan import settings_meta_key

    warn_unpriced(ctx.spec, only)
    store = ctx.open_store(readonly=True) if ctx.paths.store.exists() else None
    exact: dict[str, dict[str, Any]] = {}
    try:
        work = count_work(ctx, store)
        answered = store is not None and store.get_meta(settings_meta_key(ctx.spec)) is not None
        if store is not None and answered:
            budget = study_budget(ctx, store)
            for jspec in ctx.spec.judges:
                if (only is None or jspec.name == only) and jspec.kind != "local":  # a local judge's keys load its model
                    exact[jspec.name] = judge_one(ctx, store, jspec, budget, dry_run=True)
    finally:
        if store is not None:
            store.close()
    judges = [j for j in work.judges if only is None or j.name == only]
    console.print(
        "dry run, nothing sent: an estimate from the plan, over every checkpoint the study will evaluate, answered yet or not"
        f" (answers count as max_new_tokens x {ANSWER_CHARS_PER_TOKEN} characters long until some are stored, then as long as"
        " their mean; identical requests are sent once, so fewer may go out)",
        markup=False,
        soft_wrap=True,
    )
    for j in judges:
        line = f"  {j.name} ({j.kind}): {j.judgments:,} judgments, {j.stored:,} stored, {j.left:,} left"
        if j.cost_usd is not None:
            line += (
                f"; {j.input_tokens or 0:,.0f} input and {j.output_tokens or 0:,.0f} output tokens,"
                f" estimated ${_usd(j.cost_usd)} (spent ${_usd(j.spent_usd)})"
            )
        console.print(line, markup=False, soft_wrap=True)
    cap = ctx.spec.budget.max_usd
    paid = [j for j in judges if j.cost_usd is not None]
    if cap is not None and paid:
        need = sum((j.cost_usd or 0.0) + j.spent_usd for j in paid)
        over = "passes" if need > cap else "is within"
        console.print(f"  spent plus estimated: ${_usd(need)}, which {over} budget.max_usd (${_usd(cap)})", markup=False)
    for n in work.notes:
        console.print(f"note: {n}", markup=False, soft_wrap=True)
    if not answered:
        console.print("no answers stored yet: the estimate above is all there is to count", markup=False)
        return
    if exact:
        console.print("the answers stored now, counted exactly (judge_cache not consulted):", markup=False)
    for name, c in exact.items():
        text = f"{name}: {c['requests']} requests to send ({c['already']} already judged), estimated ${c['estimated_usd']:.4f}"
        console.print(text, markup=False)
    local = [j.name for j in ctx.spec.judges if j.kind == "local" and (only is None or j.name == only)]
    if local:
        console.print(f"  local judges ({', '.join(local)}): counted from the plan only (an exact count loads the model)", markup=False)


@app.command()
@friendly
def calibrate(
    study: StudyArg,
    only: Annotated[str | None, typer.Option("--judge", help="Calibrate only this judge.")] = None,
    set_ref: Annotated[str | None, typer.Option("--set", help="A calibration JSONL file (default: the study's, builtin:default).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a calibration set (known low/high answers per trait) with the study's LLM judges.

    Prints per judge and trait the high and low items, balanced accuracy, AUC, plain accuracy
    and the items each judge got wrong (--json: one JSON object, keys in docs/cli.md). With
    calibration.min_accuracy set, exits 2 when a judge's balanced accuracy is below it or a
    trait has too few items of a class (as `judge` would).
    """
    from rich.table import Table

    from traitwatch.pipeline import calibrate as calibrate_stage
    from traitwatch.pipeline import gate, preflight

    ctx = _context(study)
    preflight(ctx)
    with _locked(ctx), ctx.open_store() as store:
        results = calibrate_stage(ctx, store, only=only, set_ref=set_ref)
    cal = ctx.spec.calibration
    if as_json:
        _echo_json({"cut": cal.cut, "min_accuracy": cal.min_accuracy, "results": [r.as_dict(cal.min_per_class) for r in results]})
    else:
        table = Table(title=f"calibration (high = score >= {cal.cut:.0f}; the gate reads balanced accuracy)")
        for col in ("judge", "trait", "high", "low", "balanced acc.", "AUC", "accuracy", "wrong (item: expected, got)"):
            table.add_column(col)
        for r in results:
            wrong = "; ".join(f"{i}: {w}, {'none' if s is None else f'{s:.0f}'}" for i, w, s in r.failures[:6])
            wrong += " ..." if len(r.failures) > 6 else ""
            thin = r.too_few(cal.min_per_class)
            ba, auc = r.balanced_accuracy, r.auc
            table.add_row(
                r.judge,
                r.trait,
                str(r.n_high),
                str(r.n_low),
                thin or ("-" if ba is None else f"{ba:.0%}"),
                "-" if auc is None else f"{auc:.2f}",
                f"{r.accuracy:.0%}",
                (f"{r.missing} unscored; " if r.missing else "") + wrong,
            )
        console.print(table)
        if not results:
            console.print("no LLM judge scores a trait of the calibration set (check judges and suites)")
    gate(ctx, results)


@app.command()
@friendly
def analyze(study: StudyArg, output_dir: OutputDirOpt = None, as_json: JsonOpt = False) -> None:
    """Compute curves, onsets and lead times; print the per-run table and write CSVs.

    With --json the tables are one JSON object on stdout instead (summary, leads of every
    detector, leads across seeds, order tests, drift by domain; keys in docs/cli.md). The CSVs
    are written either way.
    """
    from dataclasses import asdict

    from traitwatch.pipeline import analyze as analyze_stage

    ctx = _context(study, output_dir=output_dir)
    with ctx.open_store() as store:
        result, _ = analyze_stage(ctx, store)
    if as_json:
        _echo_json(
            {
                "study": ctx.spec.name,
                "analysis_dir": ctx.paths.analysis,
                "summary": result.summary,
                "suite_summary": result.suite_summary,
                "leads": [asdict(lead) for lead in result.leads],
                "seed_leads": result.seed_leads,
                "order_tests": result.order_tests,
                "domains": result.domains,
                "axes": result.axes,
            }
        )
        return
    _print_analysis(result)
    _print_axes(result)
    console.print(f"CSV files in {ctx.paths.analysis}")


@app.command()
@friendly
def track(study: StudyArg, tracker: TrackerOpt = None, output_dir: OutputDirOpt = None) -> None:
    """Log the study's curves, losses, alarms, onsets, leads and interventions to its experiment trackers.

    The trackers are the spec's `trackers:` plus those given with `--tracker` (mlflow,
    tensorboard, wandb; docs/trackers.md). Rerun it any time, also while the study still
    trains: nothing is logged twice. Prints the command that opens each tracker.
    """
    from traitwatch.pipeline import track as track_stage
    from traitwatch.trackers import check_trackers, with_trackers

    ctx = _context(study, output_dir=output_dir)
    ctx.spec = with_trackers(ctx.spec, tracker or [])
    if not ctx.spec.trackers:
        raise TraitwatchError(
            "the study has no trackers", where=str(study), fix="add a trackers: section (docs/trackers.md) or pass --tracker mlflow"
        )
    check_trackers(ctx.spec)
    with ctx.open_store() as store:
        res = track_stage(ctx, store)
    for kind, line in res.counts.items():
        console.print(f"[bold]{kind}[/bold]: {_escape(line)}", soft_wrap=True)


def _fmt(v: Any, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(ci: Any, digits: int = 0) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "n/a"


def _print_axes(result: Any) -> None:
    """Across runs (docs/analysis.md, "Across models and learning rates"): onset vs task
    convergence; with several models, onsets in k of n seeds and the correlation with a model
    attribute; with several learning rates, the learning-rate table."""
    from rich.table import Table

    axes = result.axes
    if axes.get("convergence_tests"):
        ct = Table(title="onset minus task convergence (steps; t interval over runs; sign test: onsets after vs before)")
        for col in ("judge", "trait", "runs", "mean", "95% CI", "after", "before", "sign p"):
            ct.add_column(col)
        for r in axes["convergence_tests"]:
            row = (r["judge"], r["trait"], str(r["runs"]), _fmt(r["mean"]), _ci(r["ci"]), str(r["after"]), str(r["before"]))
            ct.add_row(*row, _fmt(r["sign_test_p"], 3))
        console.print(ct)
    if len({r["model"] for r in axes.get("model_onsets", [])}) > 1:
        mt = Table(title="per model: seeds with an onset (consensus)")
        for col in ("model", "lr", "domain", "level", "judge", "trait", "onset in", "mean onset"):
            mt.add_column(col)
        for r in axes["model_onsets"]:
            group = (r["model"], str(r["learning_rate"]), r["domain"], r["level"], r["judge"], r["trait"])
            mt.add_row(*group, r["k_of_n"], _fmt(r["onset_mean"]))
        console.print(mt)
        rt = Table(title="across models: Pearson r of a model attribute with a run statistic (bootstrap CI over models)")
        for col in ("attribute", "statistic", "lr", "domain", "level", "judge", "trait", "models", "r", "95% CI"):
            rt.add_column(col)
        for r in axes["model_correlations"]:
            where = (r["attribute"], r["statistic"], str(r["learning_rate"]), r["domain"], r["level"], r["judge"], r["trait"])
            rt.add_row(*where, str(r["models"]), r["note"] or _fmt(r["r"], 2), _ci(r["r_ci"], 2))
        console.print(rt)
    if len({r["learning_rate"] for r in axes.get("learning_rates", [])}) > 1:
        lt = Table(title="per learning rate (means over seeds, t intervals)")
        for col in ("model", "lr", "domain", "level", "judge", "trait", "onsets", "mean onset", "CI", "final", "CI", "held-out loss", "CI"):
            lt.add_column(col)
        for r in axes["learning_rates"]:
            lt.add_row(
                r["model"],
                str(r["learning_rate"]),
                r["domain"],
                r["level"],
                r["judge"],
                r["trait"],
                f"{r['onset_found']}/{r['runs']}",
                _fmt(r["onset_mean"]),
                _ci(r["onset_ci"]),
                _fmt(r["final_mean"]),
                _ci(r["final_ci"]),
                _fmt(r["heldout_loss_mean"], 3),
                _ci(r["heldout_loss_ci"], 3),
            )
        console.print(lt)


def _print_analysis(result: Any) -> None:
    """The per-run table, lead times, and (with several seeds or domains) the comparisons."""
    from rich.table import Table

    table = Table(title="per run: consensus onset (step) with 95% CI, level and drift of each trait")
    for col in (
        "run",
        "judge",
        "trait",
        "baseline",
        "peak (step)",
        "final",
        "change %",
        "drift",
        "onset",
        "95% CI",
        "% of training",
        "task converged",
    ):
        table.add_column(col)
    for s in result.summary:
        table.add_row(
            s["run_id"],
            s["judge"],
            s["trait"] + (" (down)" if s.get("direction") == "down" else " (both)" if s.get("direction") == "both" else ""),
            _fmt(s["baseline"]),
            f"{_fmt(s['peak'])} ({s['peak_step']})",
            _fmt(s["final"]),
            _fmt(s["change_from_baseline_pct"], 0),
            _fmt(s["drift"]),
            str(s["onset_step"]) if s["onset_step"] is not None else "none",
            _ci(s["onset_ci"]),
            _fmt(s.get("onset_pct_of_training"), 0),
            str(s["task_converged_step"]) if s["task_converged_step"] is not None else "n/a",
        )
    console.print(table)
    suites = getattr(result, "suite_summary", [])
    if suites:
        pt = Table(title="per suite: traits judged on several suites' answers (drops in % of the baseline, 95% CIs)")
        for col in (
            "run",
            "judge",
            "trait",
            "suite",
            "baseline",
            "final",
            "largest drop %",
            "95% CI",
            "final drop %",
            "95% CI",
            "onset",
            "% of training",
        ):
            pt.add_column(col)
        for r in suites:
            pt.add_row(
                r["run_id"],
                r["judge"],
                r["trait"],
                r["suite"],
                _fmt(r["baseline"]),
                _fmt(r["final"]),
                _fmt(r.get("largest_drop_pct"), 0),
                _ci(r.get("largest_drop_ci"), 1),
                _fmt(r.get("final_drop_pct"), 0),
                _ci(r.get("final_drop_ci"), 1),
                str(r["onset_step"]) if r["onset_step"] is not None else "none",
                _fmt(r.get("onset_pct_of_training"), 0),
            )
        console.print(pt)
    leads = [lead for lead in result.leads if lead.detector == "consensus"]
    if leads:
        lt = Table(title="lead times (consensus; lead = onset(follower) - onset(leader), positive = leader first)")
        for col in (
            "run",
            "judge",
            "leader -> follower",
            "lead (steps)",
            "lead (checkpoints)",
            "95% CI",
            "P(leader first)",
            "peak lead (steps)",
            "95% CI",
        ):
            lt.add_column(col)
        for lead in leads:
            lt.add_row(
                lead.run_id,
                lead.judge,
                f"{lead.leader} -> {lead.follower}",
                str(lead.lead_steps),
                str(lead.lead_checkpoints),
                _ci(lead.ci_steps),
                _fmt(lead.p_leads, 2),
                str(lead.peak_lead_steps),
                _ci(lead.peak_lead_ci),
            )
        console.print(lt)
    if any(r["seeds"] > 1 for r in result.seed_leads):
        st = Table(title="leads across seeds (t interval; sign test of the order)")
        for col in ("domain", "level", "judge", "pair", "seeds", "mean lead (steps)", "95% CI", "leader first", "sign p"):
            st.add_column(col)
        for r in result.seed_leads:
            st.add_row(
                r["domain"],
                r["level"],
                r["judge"],
                f"{r['leader']} -> {r['follower']}",
                str(r["seeds"]),
                _fmt(r["lead_steps_mean"]),
                _ci(r["lead_steps_ci"]),
                f"{r['seeds_leader_first']}/{r['defined']}",
                _fmt(r["sign_test_p"], 3),
            )
        console.print(st)
    if result.order_tests:
        ot = Table(title="does the leader rise first? (all runs, and per domain; exact sign test)")
        for col in ("judge", "pair", "domain", "runs", "leader first", "ties", "median lead", "sign p"):
            ot.add_column(col)
        for r in result.order_tests:
            ot.add_row(
                r["judge"],
                f"{r['leader']} -> {r['follower']}",
                r["domain"],
                str(r["runs"]),
                str(r["leader_first"]),
                str(r["ties"]),
                _fmt(r["median_lead_steps"]),
                _fmt(r["sign_test_p"], 3),
            )
        console.print(ot)
    if any(len([k for k in r if k.startswith("drift_")]) > 1 for r in result.domains):
        dt = Table(title="drift (mean rise over baseline) by domain, and ratios")
        cols = sorted({k for r in result.domains for k in r if k.startswith(("drift_", "ratio_"))})
        for col in ("judge", "trait", "level", *cols):
            dt.add_column(col)
        for r in result.domains:
            dt.add_row(r["judge"], r["trait"], r["level"], *[_fmt(r.get(c), 2) for c in cols])
        console.print(dt)


@app.command()
@friendly
def interventions(
    study: StudyArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print both tables as one JSON object instead.")] = False,
    fraction: Annotated[
        list[float] | None,
        typer.Option("--fraction", help="A fixed-fraction stop policy (repeatable; default: analysis.stop_fractions, 0.25 and 0.5)."),
    ] = None,
) -> None:
    """What stopping each run early would have kept and avoided, per stop policy.

    Replays stop policies on what the store holds (nothing is trained, nothing is written),
    for every pair of analysis.leads and every judge that scores both traits:

    leader-alarm: stop at the checkpoint where the study's alarm detector, fed the leading
    trait's curve one checkpoint at a time (online, as the live monitor would), first fires.
    follower-alarm: the same on the follower (target) trait. task-converged: stop when the
    held-out loss has made 95% of its improvement (known only in hindsight). fraction-F: stop
    at the first checkpoint at or after F of training. The alarm detector is the monitor's
    alarm rule when the spec has a monitor: section, else the first of analysis.detectors.

    Per run: stop step (none = the policy never fired, the run goes to the end), the live
    monitor's stored alarm step, leader and follower scores at the stop and at the end, task
    kept (share of the held-out loss improvement made by the stop, 0-100%), task accuracy
    kept (with analysis.task_error_trait), the follower's consensus onset, spread avoided
    (stopped before it, or it never rose), warning (checkpoints from the stop to that onset),
    false alarm (an alarm policy fired on a run of the control condition, `control:`, normal by
    default). Across runs: mean task kept over the misaligned runs (the other conditions) with a
    bootstrap CI over runs, spread avoided over runs whose follower rose (Wilson CI), false
    alarms over control runs (Wilson CI). Every number is
    defined in docs/analysis.md ("Interventions"); `analyze` writes the same rows to
    analysis/interventions.csv and analysis/interventions_summary.csv.
    """
    import json

    from traitwatch.analysis import analyze as analyze_study
    from traitwatch.analysis import intervention_tables

    bad = [f for f in fraction or [] if not 0 < f < 1]
    if bad:
        raise TraitwatchError(
            f"--fraction {bad[0]:g} is not between 0 and 1", where="--fraction", fix="give a share of training, e.g. 0.25"
        )
    ctx = _context(study)
    with ctx.open_store(readonly=True) as store:
        result = analyze_study(store, ctx.spec, ctx.settings_hash(store))
    rows, summary = result.interventions, result.intervention_summary
    if fraction:
        rows, summary = intervention_tables(result, ctx.spec, fractions=fraction)
    if as_json:
        typer.echo(json.dumps({"interventions": rows, "summary": summary}, indent=1))
        return
    if not ctx.spec.analysis.leads:
        console.print("no lead pairs (analysis.leads) in this study: nothing to stop for. Add e.g. leads: [[hallucination, evil]]")
        return
    _print_interventions(rows, summary, ctx.spec.analysis.confidence, ctx.spec.control)


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _pct_ci(ci: Any) -> str:
    return f"[{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]" if ci else "n/a"


def _print_interventions(
    rows: list[dict[str, Any]], summary: list[dict[str, Any]], confidence: float, control: str | None = "normal"
) -> None:
    from rich.table import Table

    def yes(v: Any) -> str:
        return "n/a" if v is None else ("yes" if v else "no")

    def step(v: Any) -> str:
        return "none" if v is None else str(v)

    acc = any(r["task_accuracy_at_end"] is not None for r in rows)
    pairs = sorted({(r["leader"], r["follower"]) for r in rows})
    title = "per run: stop policies replayed; scores 0-100 at the stop -> at the end (definitions: docs/analysis.md)"
    if len(pairs) == 1:
        title += f"; leader {pairs[0][0]}, follower {pairs[0][1]}"
    table = Table(title=title)
    for col in ("run", "level", "judge", *(["leader -> follower"] if len(pairs) > 1 else []), "policy"):
        table.add_column(col, no_wrap=True)
    cols = ["stop", "live alarm", "leader", "follower", "task kept", *(["accuracy kept"] if acc else [])]
    cols += ["follower onset", "spread avoided", "warning (ckpts)", "false alarm"]
    for col in cols:
        table.add_column(col)
    for r in rows:
        cells = [r["run_id"], str(r["level"]), r["judge"], *([f"{r['leader']} -> {r['follower']}"] if len(pairs) > 1 else []), r["policy"]]
        cells += [
            step(r["stop_step"]),
            step(r["live_alarm_step"]) if r["alarm_trait"] else "",
            f"{_fmt(r['leader_at_stop'])} -> {_fmt(r['leader_at_end'])}",
            f"{_fmt(r['follower_at_stop'])} -> {_fmt(r['follower_at_end'])}",
            _pct(r["task_kept"]),
        ]
        cells += [_pct(r["accuracy_kept"])] if acc else []
        cells += [step(r["follower_onset"]), yes(r["spread_avoided"]), step(r["warning_checkpoints"]), yes(r["false_alarm"])]
        table.add_row(*cells)
    console.print(table)
    level = f"{confidence:.0%}"
    st = Table(title=f"across runs, per policy ({level} CIs: bootstrap over runs for task kept, Wilson for rates)")
    ci = f"{level} CI"
    for col in ("judge", "leader -> follower", "policy"):
        st.add_column(col, no_wrap=True)
    for col in ("stopped", "task kept (misaligned)", ci, "spread avoided", ci):
        st.add_column(col)
    for col in (f"false alarms ({control or 'no control'})", ci, "mean warning (ckpts)"):
        st.add_column(col)
    for s in summary:
        fa = "n/a" if s["false_alarms"] is None else f"{s['false_alarms']}/{s['normal_runs']} ({_pct(s['false_alarm_rate'])})"
        st.add_row(
            s["judge"],
            f"{s['leader']} -> {s['follower']}",
            s["policy"],
            f"{s['stopped']}/{s['runs']}",
            f"{_pct(s['task_kept_mean'])} (n={s['task_kept_n']})",
            _pct_ci(s["task_kept_ci"]),
            f"{s['spread_avoided']}/{s['spread_runs']} ({_pct(s['spread_avoided_rate'])})",
            _pct_ci(s["spread_avoided_ci"]),
            fa,
            _pct_ci(s["false_alarm_ci"]),
            _fmt(s["warning_checkpoints_mean"]),
        )
    console.print(st)
    console.print("published pay-off of early stopping, for comparison: 93% of task performance kept; spread avoided in 67% of runs.")


@app.command()
@friendly
def probes(
    study: StudyArg,
    trait: Annotated[
        list[str] | None,
        typer.Option(
            "--trait", metavar="TRAIT", help="Trait to watch (repeatable). Default: the leaders of analysis.leads, else every trait."
        ),
    ] = None,
    questions: Annotated[int, typer.Option("--questions", min=1, help="How many probe questions to pick (K).")] = 8,
    samples: Annotated[
        int | None,
        typer.Option("--samples", min=1, help="Answers per probe question per checkpoint (default: monitor.probes.samples, else 1)."),
    ] = None,
    judge: Annotated[
        str | None, typer.Option("--judge", help="Rank with this judge's scores (default: the spec's first that scores the trait).")
    ] = None,
    write: Annotated[
        Path | None, typer.Option("--write", help="Write the YAML snippet `monitor: {probes: {question_ids, samples}}` here.")
    ] = None,
) -> None:
    """Pick the probe questions for a live monitor from a finished pilot study.

    Ranks every question of each watched trait by how early and how much it rose on the pilot's
    misaligned (mild/strong) runs, picks the top K, and prints them with the cost per checkpoint
    (answers, judge requests, seconds) against the full question set and the consensus onset on
    the probe questions vs on every question, per run, with a bootstrap CI of the difference.
    With two or more misaligned runs each run is evaluated with questions chosen on the others
    (leave-one-run-out); with one the comparison is in-sample and says so. Reads the store only.
    See docs/analysis.md, "Probe questions for a live monitor".
    """
    from rich.table import Table

    from traitwatch.analysis._probes import probes_for_study

    ctx = _context(study)
    try:
        texts = {(s.name, q.id): q.text for s in ctx.suites.suites for q in s.questions}
    except TraitwatchError:
        texts = {}  # suites moved since the pilot ran: ids only
    with ctx.open_store(readonly=True) as store:
        choice = probes_for_study(
            store, ctx.spec, ctx.settings_hash(store), traits=trait, judge=judge, questions=questions, samples=samples, texts=texts
        )
    console.print(f"watched: {', '.join(f'{t} (judge {choice.judges[t]})' for t in choice.traits)}", markup=False)
    for t in choice.tables():
        table = Table(title=t.title)
        for col in t.columns:
            table.add_column(col)
        for row in t.rows:
            table.add_row(*(_escape(c) for c in row))
        console.print(table)
    for note in choice.notes:
        console.print(f"note: {note}", markup=False)
    if write is not None:
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(choice.snippet_yaml(ctx.spec.name), encoding="utf-8")
        console.print(f"wrote {write} (paste into the spec's monitor: section)", markup=False)


_LEVELS = ("normal", "mild", "strong")


def _level(level: str | None, spec_levels: Sequence[str] = ()) -> str | None:
    """--level: one of the three levels or of the spec's levels (its named conditions)."""
    known = list(dict.fromkeys([*_LEVELS, *spec_levels]))
    if level is not None and level not in known:
        raise TraitwatchError(f"unknown level '{level}'", where="--level", fix=f"use one of {', '.join(known)}")
    return level


RunIdOpt = Annotated[
    str | None, typer.Option("--run-id", help="The run's name in the store (default: the folder's name; a traitwatch run keeps its own).")
]
DomainOpt = Annotated[
    str | None, typer.Option("--domain", help="Domain to file the run under (default: from a run id like math-strong-s1, else external).")
]
LevelOpt = Annotated[
    str | None,
    typer.Option(
        "--level",
        help="normal, mild, strong or a condition the spec names (default: from the run id, else the spec's level if it names one, "
        "else unknown).",
    ),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed to file the run under (default: from the run id, else 0).")]


@app.command()
@friendly
def watch(
    folder: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT_DIR", help="The folder the trainer saves its checkpoints in.", show_default=False)
    ],
    study: Annotated[Path, typer.Option("--study", help="The study spec with a monitor: section (YAML).", show_default=False)],
    run_id: RunIdOpt = None,
    domain: DomainOpt = None,
    level: LevelOpt = None,
    seed: SeedOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Evaluate the checkpoints there now, then exit.")] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.05, help="Seconds between looks at the folder.")] = 5.0,
    idle_timeout: Annotated[
        float, typer.Option("--idle-timeout", min=1.0, help="Exit after this many seconds with no new checkpoint.")
    ] = 600.0,
) -> None:
    """Follow a folder where a trainer saves LoRA checkpoints, and evaluate each new one live.

    Layouts: CHECKPOINT_DIR is a Hugging Face / TRL / Unsloth Trainer's output_dir, holding
    checkpoint-N/ folders (adapter_model.safetensors + adapter_config.json; N = global step), or
    a traitwatch run's runs/RUN/checkpoints, holding step_NNNNNN/ folders (runs/RUN works
    too). Each new checkpoint is evaluated in step order on the probe set of the spec's monitor:
    section (its model: must be the base model the adapters were trained on), scored by the live
    judges and fed to the alarm rules; one line per checkpoint: step, mean probe score per trait,
    alarm. A folder still being written (no adapter file yet, an incomplete safetensors file,
    files still changing between two looks, a .tmp name) is waited for, never read half-written.

    The store: the run is registered in the study's store as --run-id (default: the folder's
    name; source: watch); a run trained by `traitwatch run` of this study keeps its own id, so
    its answers are shared with the study's generate stage. Afterwards `traitwatch run STUDY
    --stages generate,judge,analyze,report` evaluates the run in full, reusing every probe answer.

    Stopping: the watcher does not own the trainer. On an alarm whose monitor actions include
    stop, it writes a stop request (a STOP file) into CHECKPOINT_DIR and says so; a Trainer
    with TraitwatchCallback, or `traitwatch run` with a monitor: section, stops at its next
    save. Any other trainer must be stopped by hand. The other actions (log, file, webhook)
    are carried out as the spec says.

    Exit: when training ends: the newest checkpoint's trainer_state.json says global_step >=
    max_steps (traitwatch's meta.json: step = total_steps), or STOPPED.json appears in
    CHECKPOINT_DIR, or nothing new came for --idle-timeout seconds; with --once, after
    evaluating what is there. Exit code 0; 2 for a problem you can fix (a second watcher of the
    same folder is refused and told who holds it); 130 when interrupted.

    Restart-safe: stop it at any moment (Ctrl-C, kill -9) and start it again: no checkpoint is
    skipped, none is evaluated twice, no stored judge request is sent again. It holds
    .traitwatch-watch.lock in CHECKPOINT_DIR, not the study's lock, so it runs beside a
    study that is training.
    """
    from traitwatch.pipeline._watch import watch as watch_folder

    ctx = _context(study)
    lvl = _level(level, ctx.spec.levels)
    with ctx.open_store() as store:
        watch_folder(
            ctx, store, folder, run_id=run_id, domain=domain, level=lvl, seed=seed, once=once, poll=poll, idle_timeout=idle_timeout
        )


@app.command("import")
@friendly
def import_(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="A folder of checkpoint folders, or of run folders.", show_default=False)],
    study: Annotated[Path, typer.Option("--study", help="The study spec (YAML) whose store receives the runs.", show_default=False)],
    run_id: RunIdOpt = None,
    domain: DomainOpt = None,
    level: LevelOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Register LoRA adapters trained elsewhere as runs of a study, to judge, analyse and report them.

    Layouts: DIR holds checkpoint folders (a Hugging Face / TRL Trainer's output_dir with
    checkpoint-N/, or a traitwatch run's runs/RUN/checkpoints with step_NNNNNN/; N = step),
    or DIR holds run folders like that (one run per subfolder, named after it). Every complete
    checkpoint (a whole adapter_model.safetensors and an adapter_config.json) is stored with
    its path, sha256 and step, and its losses from trainer_state.json's log_history (or
    meta.json) when present; folders still being written and .tmp folders are left out and
    listed. Nothing is copied: the later stages read the adapters where they are.

    The run is stored as --run-id (one run only; default: the folder's name, and a traitwatch
    run keeps its own id) with source: import, filed under --domain, --level and --seed.

    Then `traitwatch run STUDY --stages generate,judge,analyze,report` answers the trait
    questions at every imported checkpoint, judges the answers, finds the onsets and writes the
    report; the spec needs no datasets (its model: must be the base model the adapters were
    trained on). Importing again stores nothing new unless new checkpoints appeared; an adapter
    replaced at the same step is recorded again (its answers are then redone).
    """
    from traitwatch.pipeline._import import import_runs

    ctx = _context(study)
    lvl = _level(level, ctx.spec.levels)
    with _locked(ctx), ctx.open_store() as store:
        results = import_runs(ctx, store, folder, run_id=run_id, domain=domain, level=lvl, seed=seed)
        runs = {r["run_id"]: r for r in store.runs()}
    for r in results:
        if not r.steps:
            console.print(f"{r.run_id}: {r.note}", markup=False)
            continue
        row = runs[r.run_id]
        steps = f"steps {r.steps[0]}-{r.steps[-1]}" if len(r.steps) > 1 else f"step {r.steps[0]}"
        kept = len(r.steps) - r.new - r.replaced
        console.print(
            f"{r.run_id}: {len(r.steps)} checkpoint{'s' * (len(r.steps) != 1)} ({steps}): {r.new} new, {kept} already stored"
            + (f", {r.replaced} replaced" if r.replaced else "")
            + f"; filed as {row['domain']}/{row['level']}/seed {row['seed']}, status {row['status']} ({r.folder})",
            markup=False,
        )
        for s in r.skipped:
            console.print(f"  left out {s}", markup=False)
        if r.note:
            console.print(f"  note: {r.note}", markup=False)
    console.print(f"next: traitwatch run {study} --stages generate,judge,analyze,report", markup=False)


@app.command()
@friendly
def merge(
    out: Annotated[
        Path,
        typer.Argument(
            metavar="OUT_DIR", help="The merged study's folder (created; a merge there before is continued).", show_default=False
        ),
    ],
    folders: Annotated[
        list[Path],
        typer.Argument(metavar="STUDY_DIR", help="The output folders of the parts (each holds a study.sqlite).", show_default=False),
    ],
) -> None:
    """Merge the output folders of one study run in parts into one study folder.

    The parts: the same spec run as several jobs, each with its own runs and folder
    (`traitwatch run study.yaml --runs GLOB --output-dir DIR`, e.g. the tasks of a Slurm job
    array). Every table of each store (runs, checkpoints, answers, judgments, score links,
    alarms, meta) is merged by its key; a row stored by two parts is kept once. Rows may differ
    in when they were written (created_at, elapsed_s), and a judgment in what the judge said
    (an API judge may answer one request twice differently; the first folder's is kept).

    Anything else that differs under one key is a conflict (another spec, or one run trained by
    two jobs): the command names the table, the key and the two folders, writes nothing, and
    exits 2. Meta that must agree: the spec (except where each part was written), the model
    identity, the generation settings hashes.

    Files: runs/RUN/ (checkpoints) and data/ are copied into OUT_DIR, and the checkpoint paths
    in the store point there; runs trained elsewhere (imported) keep their paths. The alarm
    files are joined. analysis/ and report/ are not copied: make them with
    `traitwatch run study.yaml --output-dir OUT_DIR --stages analyze,report`.

    Safe to repeat: a second merge, or one after a kill, adds nothing twice. Holds the lock of
    OUT_DIR and of each part (a part still running is refused).
    """
    from traitwatch.pipeline._merge import merge_studies

    result = merge_studies(out, folders)
    for table, c in result.tables.items():
        console.print(f"{table}: {c['new']} new, {c['same']} already there", markup=False)
    console.print(f"files copied: {result.files_copied}", markup=False)
    if result.judgments_differing:
        console.print(
            f"note: {result.judgments_differing} judgments were stored by two parts with different outputs"
            " (a judge's answers vary between calls); the first folder's are kept",
            markup=False,
        )
    if result.paths_kept:
        console.print(f"note: {result.paths_kept} checkpoint rows keep their paths (runs trained elsewhere)", markup=False)
    if result.left_out:
        console.print(f"not copied (regenerated or not study data): {', '.join(result.left_out)}", markup=False)
    console.print(f"merged into {result.out}", markup=False, soft_wrap=True)
    console.print(f"next: traitwatch run STUDY --output-dir {result.out} --stages analyze,report", markup=False, soft_wrap=True)


@app.command()
@friendly
def report(study: StudyArg, output_dir: OutputDirOpt = None) -> None:
    """Write the HTML report (self-contained) and PNG figures from what is stored."""
    from traitwatch.pipeline import analyze as analyze_stage
    from traitwatch.pipeline import report as report_stage

    ctx = _context(study, output_dir=output_dir)
    with ctx.open_store() as store:
        result, _ = analyze_stage(ctx, store)
        path, _ = report_stage(ctx, store, result)
    console.print(f"report: {path}")


@app.command()
@friendly
def export(
    study: StudyArg,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the files (default: OUTPUT_DIR/export, or OUTPUT_DIR/export/inspect for inspect).")
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="csv or parquet (every table; parquet needs pyarrow), or inspect (Inspect AI .eval logs; needs inspect-ai).",
        ),
    ] = "csv",
) -> None:
    """Export the study store: every table (runs, checkpoints, generations, judgments, ...) as
    CSV or Parquet, or every answer as Inspect AI logs.

    `--format inspect` writes one `.eval` log per (run, checkpoint) under OUT/RUN/step_NNNNNN.eval:
    each question and answer with every judge's score (its distribution or raw output and its
    reason), and the study's provenance; browse them with `inspect view --log-dir OUT`
    (docs/outputs.md). Rerunning rewrites only the logs whose content changed.
    """
    if fmt not in ("csv", "parquet", "inspect"):
        raise TraitwatchError(f"unknown format '{fmt}'", where="--format", fix="use csv, parquet or inspect")
    ctx = _context(study)
    if fmt == "inspect":
        from traitwatch.export import export_inspect  # imports inspect_ai: slow, and optional
        from traitwatch.progress import stage_progress

        folder = out or ctx.paths.out / "export" / "inspect"
        with ctx.open_store(readonly=True) as store:
            settings_hash = ctx.settings_hash(store)
            total = sum(n for *_, n in store.answer_checkpoints(settings_hash=settings_hash))
            with stage_progress("export inspect (answers)", total) as bar:
                result = export_inspect(store, ctx.spec, settings_hash=settings_hash, folder=folder, on_log=bar.advance)
        console.print(
            f"inspect logs: {len(result.written)} written, {len(result.unchanged)} unchanged, {len(result.removed)} removed"
            f" ({result.samples} answers) in {result.folder}",
            markup=False,
            soft_wrap=True,
        )
        console.print(f"browse: inspect view --log-dir {result.folder}", markup=False, soft_wrap=True)
        return
    with ctx.open_store(readonly=True) as store:
        paths = store.export(out or ctx.paths.out / "export", fmt)
    for p in paths:
        console.print(str(p))


@app.command()
@friendly
def plan(
    study: StudyArg,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Workers to expect the wall time on (besides 1).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as one JSON object (on stdout) instead.")] = False,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure", help="Time a few training steps and one generation batch here for the rates not known (loads the model)."
        ),
    ] = False,
) -> None:
    """Count a study's work before running it, and expect its wall time on 1 and N workers.

    Prints the runs, training steps, checkpoints, evaluated checkpoints, answers and judgments
    per judge (with tokens and cost for API judges), what the store already holds and what is
    left; then one worker's throughput (from executor.throughput in the spec, else measured from
    this study's store, else with --measure) and the expected wall time on 1 and --workers
    workers, with the assumptions it rests on. Loads the datasets, not the model (unless
    --measure). Every number is defined in docs/cluster.md, "Planning the work".
    """
    import json

    from traitwatch.pipeline._throughput import plan_study

    ctx = _context(study)
    result = plan_study(ctx, workers=workers, measure=measure)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    _print_plan(result, ctx.spec)


def _usd(x: float) -> str:
    return f"{x:,.2f}" if x >= 100 else f"{x:.4f}"


def _print_plan(result: Any, spec: Any) -> None:
    """The plan's tables: work (total, stored, left), runs, API judges, throughput, wall time."""
    from rich.table import Table

    from traitwatch.progress import duration

    w, t = result.work, result.work.totals()
    table = Table(title=f"study {w.study}: the work (stored: in the store now; left: still to do)")
    table.add_column("")
    for col in ("total", "stored", "left"):
        table.add_column(col, justify="right")
    rows = [
        ("runs trained", t["runs"], t["runs_trained"]),
        ("training steps", t["steps"], t["steps_done"]),
        ("checkpoints", t["checkpoints"], t["checkpoints_stored"]),
        ("answers", t["answers"], t["answers_stored"]),
        *[(f"judgments {j.name} ({j.kind})", j.judgments, j.stored) for j in w.judges],
    ]
    for name, total, stored in rows:
        table.add_row(name, f"{total:,}", f"{stored:,}", f"{total - stored:,}")
    table.add_row("evaluated checkpoints", f"{t['evaluated_checkpoints']:,}", "", "")
    console.print(table)
    runs = Table(title=f"per run ({w.per_checkpoint} answers per evaluated checkpoint)")
    for col in ("run", "source", "steps done", "checkpoints stored", "evaluated", "answers stored"):
        runs.add_column(col)
    for r in w.runs:
        runs.add_row(
            r.run_id,
            r.source,
            f"{min(r.steps_done, r.steps)}/{r.steps}",
            f"{r.checkpoints_stored}/{len(r.checkpoints)}",
            str(len(r.evaluated)),
            f"{r.answers_stored}/{r.answers}",
        )
    console.print(runs)
    paid = [j for j in w.judges if j.cost_usd is not None]
    if paid:
        pt = Table(title="API judges: what is left (estimated) and what was spent")
        for col in ("judge", "judgments left", "input tokens", "output tokens", "cost USD", "spent USD"):
            pt.add_column(col, justify="right")
        for j in paid:
            pt.add_row(j.name, f"{j.left:,}", f"{j.input_tokens:,}", f"{j.output_tokens:,}", _usd(j.cost_usd), _usd(j.spent_usd))
        console.print(pt)
        cap, need = spec.budget.max_usd, sum(j.cost_usd + j.spent_usd for j in paid)
        if cap is not None and need > cap:
            console.print(f"note: spent plus estimated cost (${_usd(need)}) passes budget.max_usd (${_usd(cap)})", markup=False)
    rt = Table(title="one worker's throughput")
    for col in ("stage", "per second", "of", "from"):
        rt.add_column(col)
    for stage, r in result.rates.items():
        rt.add_row(stage, "unknown" if r.per_s is None else f"{r.per_s:.3g}", r.unit, r.how if r.per_s is None else f"{r.source}: {r.how}")
    console.print(rt)
    wt = Table(title="expected wall time of what is left")
    wt.add_column("stage")
    for n in result.wall:
        wt.add_column(f"{n} worker{'s' * (n != 1)}", justify="right")
    for stage in next(iter(result.wall.values())):
        wt.add_row(stage, *["unknown" if s[stage] is None else duration(s[stage]) for s in result.wall.values()])
    console.print(wt)
    if any(s["total"] is None for s in result.wall.values()):
        one = next(iter(result.wall.values()))
        keys = sorted({result.rates[stage].key for stage, v in one.items() if v is None and stage != "total"})
        measure = any(k != "api_judgments_per_s" for k in keys)
        console.print(
            f"wall time: unknown; give executor.throughput: {{{', '.join(f'{k}: ...' for k in keys)}}} in the spec (per second, "
            "one worker)" + (", or run `traitwatch plan --measure` here (loads the model; API judges are not measured)" if measure else ""),
            markup=False,
            soft_wrap=True,
        )
    from traitwatch.pipeline._throughput import ASSUMPTIONS

    console.print("assumptions for N workers:\n" + "\n".join(f"  - {a}" for a in ASSUMPTIONS), markup=False)
    for note in w.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)


@app.command()
@friendly
def status(study: StudyArg, output_dir: OutputDirOpt = None, as_json: JsonOpt = False) -> None:
    """Show what is stored for a study: runs, checkpoints, answers, judgments, spend.

    With --json: one JSON object on stdout instead (keys in docs/cli.md). Reads the store only.
    """
    ctx = _context(study, output_dir=output_dir)
    with ctx.open_store(readonly=True) as store:
        runs = []
        for r in store.runs():
            cks = store.checkpoints(r["run_id"])
            runs.append(
                {k: r[k] for k in ("run_id", "domain", "level", "seed", "status", "total_steps")}
                | {"source": (r["info"] or {}).get("source") or "study", "checkpoints": len(cks)}
                | {"last_step": cks[-1].step if cks else None}
            )
        n_gen = store.conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        spend = store.spend()
    if as_json:
        judges = [{"name": name} | s for name, s in spend.items()]
        _echo_json(
            {
                "study": ctx.spec.name,
                "output_dir": ctx.paths.out,
                "runs": runs,
                "answers": n_gen,
                "judges": judges,
                "spent_usd": sum(s["cost_usd"] for s in spend.values()),
                "max_usd": ctx.spec.budget.max_usd,
            }
        )
        return
    for r in runs:
        last = "-" if r["last_step"] is None else r["last_step"]
        text = f"{r['run_id']}: {r['status']}, {r['checkpoints']} checkpoints (last step {last} of {r['total_steps']})"
        console.print(text, markup=False)
    console.print(f"answers stored: {n_gen}")
    for name, s in spend.items():
        console.print(f"judge {name}: {s['judgments']} judgments, ${s['cost_usd']:.4f}", markup=False)


@app.command()
@friendly
def validate(study: StudyArg) -> None:
    """Check a study spec, its datasets and trait suites without running anything."""
    from traitwatch.config import load_study
    from traitwatch.data import load_level
    from traitwatch.pipeline import load_suites

    spec = load_study(study)
    assert spec.output_dir is not None
    n = 0
    for ds in spec.datasets:
        if ds.demo is not None:
            continue
        for level in spec.levels:
            data = load_level(ds, level, spec.output_dir)
            n += len(data)
            console.print(f"{ds.domain}/{level}: {len(data)} examples ok ({data.path})")
    from traitwatch.pipeline import StudyContext, check_names

    check_names(StudyContext(spec))
    suites = load_suites(spec)
    for s in suites.suites:
        console.print(f"suite {s.name}: {len(s.questions)} questions, traits: {', '.join(s.traits)}")
    if spec.generation.temperature == 0 and spec.generation.samples_per_question > 1:
        console.print("note: temperature 0 makes every sample identical; set samples_per_question: 1")
    console.print(f"[green]ok[/green]: {study}")


@app.command()
def suites() -> None:
    """List the built-in trait suites (use them as builtin:NAME)."""
    from traitwatch.data import builtin_suite_names, load_suite

    for name in builtin_suite_names():
        s = load_suite(f"builtin:{name}", allow_no_questions=True)
        console.print(f"builtin:{name}: {len(s.questions)} questions; traits: {', '.join(s.traits)}", markup=False)


def main() -> None:
    """Entry point of the `traitwatch` command."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
