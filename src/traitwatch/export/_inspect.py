"""A study as Inspect AI logs: every question, answer and score, browsable in ``inspect view``.

``traitwatch export STUDY --format inspect --out logs`` then ``inspect view --log-dir logs``.

Layout: one ``.eval`` log per (run, checkpoint), at ``OUT/<run_id>/step_NNNNNN.eval`` (the
folders mirror ``runs/<run>/checkpoints/step_NNNNNN/``). Why not one log per run, with the step
in each sample's metadata:

- Inspect's epochs are traitwatch's samples. Within one checkpoint a question's answers are
  the same sample id (``suite/question_id``) in epochs 1..N (``epoch = sample + 1``), so
  ``inspect view`` groups them as it groups any eval's epochs. In one log per run a question
  would be asked again at every checkpoint, so the id would need the step in it
  (``q3@step_000040``) and the view would list a run's 30 answers to one question apart.
- The log list reads as the curve. Each log's header carries the mean of every judge/trait
  over that checkpoint's answers, and the view lists, sorts and compares logs by them: one
  row per checkpoint, the model column ``<run_id>/step_NNNNNN``, the task the study.
- Bounded memory and quick views. ``write_eval_log`` takes a whole ``EvalLog`` with its
  samples; a checkpoint's answers are a few hundred even in a paper-scale study, a run's tens
  of thousands. The store is read one checkpoint at a time
  (:meth:`~traitwatch.store.Store.checkpoint_answers`), and the view opens a small log at once.
- Rerunning is cheap and exact: a log is rewritten only when its checkpoint's content changed.

Every sample still carries its run and step (and domain, level, seed) in its metadata, so
samples pooled from many logs (``inspect_ai.analysis.samples_df``) stay self-describing.

What a log holds: per sample the question (``input``, and a user message after the system
prompt if the study has one), the answer (the assistant message and ``output``, with the stop
reason), and a :class:`~inspect_ai.scorer.Score` per ``judge/trait``: the stored score as its
value (NaN, Inspect's "unscored" value, when the judge gave none, with the judge's reason), the
reason as the explanation, and in its metadata the method, the raw output (the local judge's
score distribution, the API judge's log-probabilities), the judge identity, tokens and cost.
The eval's metadata holds the provenance: the spec the study ran with, the base model's
identity and description, the generation settings hash, the traitwatch version, the run's
fingerprint and row, the checkpoint's adapter sha and row. Text is written raw (Inspect's
writer encodes it; ``inspect view`` renders it): nothing is escaped here.

Only answers of the study's current generation settings are exported (``settings_hash``),
the same ones ``analyze`` and ``Study.scores`` read.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import traitwatch
from traitwatch.config import StudySpec
from traitwatch.errors import TraitwatchError
from traitwatch.store import CheckpointAnswers, GenerationRow, JudgmentRow, Store, content_key

try:
    from inspect_ai import __version__ as _INSPECT_VERSION
    from inspect_ai.log import (
        EvalConfig,
        EvalDataset,
        EvalLog,
        EvalMetric,
        EvalResults,
        EvalSample,
        EvalScore,
        EvalSpec,
        EvalStats,
        read_eval_log,
        write_eval_log,
    )
    from inspect_ai.model import (
        ChatCompletionChoice,
        ChatMessage,
        ChatMessageAssistant,
        ChatMessageSystem,
        ChatMessageUser,
        GenerateConfig,
        ModelOutput,
        StopReason,
    )
    from inspect_ai.scorer import Score
except ModuleNotFoundError as exc:  # only inspect_ai itself missing: a broken install stays a traceback
    if not (exc.name or "").startswith("inspect_ai"):
        raise
    raise TraitwatchError(
        "the Inspect export needs the inspect-ai package",
        where="export --format inspect",
        fix="pip install 'traitwatch[inspect]' (inspect-ai needs Python 3.11+)",
    ) from None

#: Bump when what a log holds changes: every log is then rewritten on the next export.
EXPORT_VERSION = 1

#: traitwatch's ``finish`` -> Inspect's stop reason.
_STOP: dict[str, StopReason] = {"stop": "stop", "length": "max_tokens"}


@dataclass
class InspectExport:
    """What an export did: the logs written, left as they were (content unchanged) and removed
    (logs of this study for checkpoints that no longer have answers), and the samples exported."""

    folder: Path
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    samples: int = 0

    @property
    def logs(self) -> list[Path]:
        """Every log of the study in the folder after the export."""
        return sorted(self.written + self.unchanged)


@dataclass(frozen=True)
class _Provenance:
    """Study-level facts, read once: the stored spec and model, the runs and checkpoints."""

    spec_yaml: str
    model: dict[str, Any]
    runs: dict[str, dict[str, Any]]
    checkpoints: dict[tuple[str, int], dict[str, Any]]

    @classmethod
    def read(cls, store: Store, spec: StudySpec) -> _Provenance:
        from traitwatch.config import dump_study

        spec_yaml = store.get_meta("spec")  # the spec the study trained with, as it ran
        model_text = store.get_meta("model")
        checkpoints = {
            (c.run_id, c.step): {
                "path": c.path,
                "adapter_sha": c.adapter_sha,
                "train_loss": c.train_loss,
                "heldout_loss": c.heldout_loss,
                "learning_rate": c.learning_rate,
                "tokens_seen": c.tokens_seen,
                "elapsed_s": c.elapsed_s,
            }
            for c in store.checkpoints()
        }
        return cls(
            spec_yaml=spec_yaml if spec_yaml is not None else dump_study(spec),
            model=json.loads(model_text) if model_text else {"label": spec.model.label()},
            runs={r["run_id"]: r for r in store.runs()},
            checkpoints=checkpoints,
        )


def export_inspect(
    store: Store,
    spec: StudySpec,
    *,
    settings_hash: str,
    folder: Path,
    on_log: Callable[[int], None] | None = None,
) -> InspectExport:
    """Write one Inspect ``.eval`` log per (run, checkpoint) of ``store`` into ``folder``.

    Idempotent: a log whose content (its digest, kept in the log's metadata) is unchanged is
    left alone, a changed one is rewritten (written beside it and renamed, so a reader never
    sees half a log), and a log of this study for a checkpoint that has no answers any more is
    removed. Other files in ``folder`` are not touched.

    ``on_log(answers)`` is called after each log with the number of answers it holds (for a
    progress bar: a paper-scale export takes a while; ``Store.answer_checkpoints`` gives the total).
    """
    folder.mkdir(parents=True, exist_ok=True)
    prov = _Provenance.read(store, spec)
    result = InspectExport(folder)
    for run_id, step, _ in store.answer_checkpoints(settings_hash=settings_hash):
        batch = store.checkpoint_answers(run_id, step, settings_hash=settings_hash)
        if batch is None:  # deleted since the list was read
            continue
        path = folder / _folder_name(run_id) / f"step_{step:06d}.eval"
        result.samples += len(batch.generations)
        digest = _digest(batch, prov, spec, settings_hash)
        if _stored_digest(path) == digest:  # unchanged: not even built (Inspect's writer is the slow part)
            result.unchanged.append(path)
        else:
            _write(_eval_log(batch, prov, spec, settings_hash, digest), path)
            result.written.append(path)
        if on_log is not None:
            on_log(len(batch.generations))
    result.removed = _remove_stale(folder, set(result.written + result.unchanged), spec.name)
    return result


# -- one log --------------------------------------------------------------------------------
def _digest(batch: CheckpointAnswers, prov: _Provenance, spec: StudySpec, settings_hash: str) -> str:
    """A hash of everything a checkpoint's log is made from: its rows, the provenance, the
    spec, the versions of traitwatch, inspect_ai and this export (``EXPORT_VERSION``).

    Why from the inputs and not the written log: building and writing a log costs milliseconds
    per answer in Inspect's writer, hashing its rows microseconds, so a rerun over an unchanged
    paper-scale store only reads it.
    """
    gens = [tuple(getattr(g, f.name) for f in fields(g)) for g in batch.generations]
    judged = {k: [(judge, trait, *(getattr(j, f.name) for f in fields(j))) for judge, trait, j in v] for k, v in batch.judgments.items()}
    return content_key(
        "inspect-log",
        EXPORT_VERSION,
        traitwatch.__version__,
        _INSPECT_VERSION,
        settings_hash,
        spec.model_dump(mode="json"),
        prov.spec_yaml,
        prov.model,
        prov.runs.get(batch.run_id),
        prov.checkpoints.get((batch.run_id, batch.step)),
        [batch.run_id, batch.step, batch.first_created, batch.last_created],
        gens,
        judged,
    )


def _eval_log(batch: CheckpointAnswers, prov: _Provenance, spec: StudySpec, settings_hash: str, digest: str) -> EvalLog:
    """The log of one checkpoint; ``digest`` (:func:`_digest`) is kept in its metadata as ``export_digest``."""
    run = prov.runs.get(batch.run_id, {})
    checkpoint = prov.checkpoints.get((batch.run_id, batch.step), {})
    model_name = f"{batch.run_id}/step_{batch.step:06d}"
    gen = spec.generation
    design = {"run_id": batch.run_id, "step": batch.step, "domain": run.get("domain"), "level": run.get("level"), "seed": run.get("seed")}

    samples: list[EvalSample] = []
    seen: set[tuple[str, int]] = set()
    for g in batch.generations:
        sample_id = f"{g.suite}/{g.question_id}"
        if (sample_id, g.sample) in seen:  # a question re-asked after its text or the adapter changed
            sample_id = f"{sample_id}@{g.gen_key[:8]}"
        seen.add((sample_id, g.sample))
        samples.append(_sample(g, sample_id, batch.judgments.get(g.gen_key, []), design, model_name, gen.system_prompt))

    score_names = _score_order(spec, {(judge, trait) for links in batch.judgments.values() for judge, trait, _ in links})
    judge_specs = {j.name: j.model_dump(mode="json") for j in spec.judges}
    metadata: dict[str, Any] = {
        "study": spec.name,
        "traitwatch_version": traitwatch.__version__,
        "settings_hash": settings_hash,
        "model_identity": run.get("model") or prov.model.get("identity"),
        "run_fingerprint": run.get("fingerprint"),
        "adapter_sha": checkpoint.get("adapter_sha"),
        "run": run,
        "checkpoint": {"step": batch.step, **checkpoint},
        "model": prov.model,
        "spec": prov.spec_yaml,
        "export_version": EXPORT_VERSION,
        "export_digest": digest,
    }
    eval_spec = EvalSpec(
        eval_id=content_key("inspect-eval", spec.name, settings_hash, batch.run_id, batch.step)[:22],
        run_id=content_key("inspect-run", spec.name, settings_hash)[:22],
        created=_iso(batch.first_created),
        task=spec.name,
        # one task id per log: inspect view takes logs of one task id in one folder for retries and lists only the newest
        task_id=content_key("inspect-task", spec.name, settings_hash, batch.run_id, batch.step)[:22],
        task_args=design,
        dataset=EvalDataset(
            name=", ".join(sorted({g.suite for g in batch.generations})),
            samples=len({s.id for s in samples}),
            sample_ids=list(dict.fromkeys(s.id for s in samples)),
            shuffled=False,
        ),
        model=model_name,
        model_generate_config=GenerateConfig(
            temperature=gen.temperature, top_p=gen.top_p, max_tokens=gen.max_new_tokens, seed=gen.seed, system_message=gen.system_prompt
        ),
        model_args={"base_model": prov.model.get("label"), "adapter": checkpoint.get("path"), "adapter_sha": checkpoint.get("adapter_sha")},
        config=EvalConfig(epochs=gen.samples_per_question),
        packages={"traitwatch": traitwatch.__version__, "inspect_ai": _INSPECT_VERSION},
        metadata=metadata,
    )
    return EvalLog(
        status="success",
        eval=eval_spec,
        results=_results(batch, score_names, len(samples), judge_specs),
        stats=EvalStats(started_at=_iso(batch.first_created), completed_at=_iso(batch.last_created)),
        samples=samples,
    )


def _score_order(spec: StudySpec, names: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """(judge, trait) pairs in the order a log lists them: judges as the spec lists them, and per
    judge the traits of the spec's lead pairs first (leader, follower), then the rest by name.

    Why: inspect view shows the first score's mean as each log's headline in the log list, so
    the list of a run's checkpoints reads as the curve of the study's leading trait.
    """
    judges = {j.name: i for i, j in enumerate(spec.judges)}
    lead_traits = list(dict.fromkeys(t for pair in spec.analysis.leads for t in pair))
    traits = {t: i for i, t in enumerate(lead_traits)}
    return sorted(names, key=lambda n: (judges.get(n[0], len(judges)), n[0], traits.get(n[1], len(traits)), n[1]))


def _sample(
    g: GenerationRow,
    sample_id: str,
    links: Sequence[tuple[str, str, JudgmentRow]],
    design: dict[str, Any],
    model_name: str,
    system_prompt: str | None,
) -> EvalSample:
    """One answer as an Inspect sample; message ids come from the answer's key (stable across exports)."""
    messages: list[ChatMessage] = []
    if system_prompt is not None:
        messages.append(ChatMessageSystem(id=f"{g.gen_key}-system", content=system_prompt, source="input"))
    messages.append(ChatMessageUser(id=f"{g.gen_key}-user", content=g.question, source="input"))
    answer = ChatMessageAssistant(id=f"{g.gen_key}-assistant", content=g.answer, source="generate", model=model_name)
    messages.append(answer)
    return EvalSample(
        id=sample_id,
        epoch=g.sample + 1,
        input=g.question,
        target="",
        messages=messages,
        output=ModelOutput(model=model_name, choices=[ChatCompletionChoice(message=answer, stop_reason=_STOP.get(g.finish, "unknown"))]),
        scores={f"{judge}/{trait}": _score(judge, trait, j, g.answer) for judge, trait, j in links},
        metadata={
            **design,
            "suite": g.suite,
            "question_id": g.question_id,
            "sample": g.sample,
            "finish": g.finish,
            "n_tokens": g.n_tokens,
            "probes": g.probes,
            "gen_key": g.gen_key,
            "settings_hash": g.settings_hash,
        },
        uuid=g.gen_key,
    )


def _score(judge: str, trait: str, j: JudgmentRow, answer: str) -> Score:
    """A stored judgment as an Inspect score; None becomes Inspect's unscored value (NaN).

    ``answer`` is the answer judged: inspect view's sample list shows (and its filter searches)
    the selected score's answer, whichever judge/trait is selected. The strings are shared in
    memory and compress away in the log.
    """
    metadata = {
        "judge": judge,
        "trait": trait,
        "score": j.score,
        "reason": j.reason,
        "method": j.method,
        "raw": j.raw,
        "judge_identity": j.judge_identity,
        "judgment_key": j.judgment_key,
        "scoring_hash": j.scoring_hash,
        "prompt_hash": j.prompt_hash,
        "input_tokens": j.input_tokens,
        "output_tokens": j.output_tokens,
        "cost_usd": j.cost_usd,
    }
    if j.score is None:
        return Score.unscored(reason=j.reason or "no score", answer=answer, explanation=j.reason, metadata=metadata)
    return Score(value=j.score, answer=answer, explanation=j.reason, metadata=metadata)


def _results(
    batch: CheckpointAnswers, score_names: Sequence[tuple[str, str]], n_samples: int, judge_specs: dict[str, dict[str, Any]]
) -> EvalResults:
    """Per judge/trait: mean and standard error over the checkpoint's scored answers (None left
    out), with the judge's settings from the spec."""
    values: dict[tuple[str, str], list[float | None]] = {name: [] for name in score_names}
    for links in batch.judgments.values():
        for judge, trait, j in links:
            values[(judge, trait)].append(j.score)
    scores = []
    for (judge, trait), vs in values.items():
        xs = [float(v) for v in vs if v is not None]
        mean = sum(xs) / len(xs) if xs else math.nan
        stderr = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else math.nan
        name = f"{judge}/{trait}"
        scores.append(
            EvalScore(
                name=name,
                scorer=name,
                scored_samples=len(xs),
                unscored_samples=len(vs) - len(xs),
                metrics={"mean": EvalMetric(name="mean", value=mean), "stderr": EvalMetric(name="stderr", value=stderr)},
                metadata={"judge": judge, "trait": trait, "judge_spec": judge_specs.get(judge)},
            )
        )
    return EvalResults(total_samples=n_samples, completed_samples=n_samples, scores=scores)


def _folder_name(run_id: str) -> str:
    """The run's folder under the export folder: its id, unless that is no plain file name
    (an imported run's ``--run-id`` is free text): then percent-quoted, so a log never lands
    outside the folder."""
    name = quote(run_id, safe="-_.@+=,~ ")
    return name if name not in ("", ".", "..") else f"run-{content_key(run_id)[:12]}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


# -- files ----------------------------------------------------------------------------------
def _stored_digest(path: Path) -> str | None:
    """The digest an existing log was written with (None: no log, or not one we can read)."""
    if not path.is_file():
        return None
    try:
        meta = read_eval_log(path.as_posix(), header_only=True).eval.metadata or {}
    except Exception:  # a damaged or foreign file is rewritten
        return None
    digest = meta.get("export_digest")
    return digest if isinstance(digest, str) else None


def _write(log: EvalLog, path: Path) -> None:
    """Write ``log`` beside ``path`` and rename it into place: a reader never sees half a log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")  # not ``*.eval``: inspect view does not list it
    try:
        write_eval_log(log, partial.as_posix(), format="eval")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _remove_stale(folder: Path, kept: set[Path], study: str) -> list[Path]:
    """Remove this study's logs (by their metadata) that this export did not produce, and
    ``.partial`` files a killed export left; anything else in ``folder`` stays."""
    removed: list[Path] = []
    for partial in sorted(folder.glob("*/step_*.eval.partial")):
        partial.unlink(missing_ok=True)
    for path in sorted(folder.glob("*/step_*.eval")):
        if path in kept:
            continue
        try:
            meta = read_eval_log(path.as_posix(), header_only=True).eval.metadata or {}
        except Exception:
            continue
        if meta.get("study") == study and "export_digest" in meta:
            path.unlink()
            removed.append(path)
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
    return removed
