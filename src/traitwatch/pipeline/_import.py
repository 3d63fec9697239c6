"""Register adapters trained elsewhere as runs of a study (``traitwatch import``).

Why: the generate, judge, analyze and report stages read runs and checkpoints from the
store; a run trained by another trainer (TRL, Unsloth, a cluster job, a colleague's study)
becomes analysable by writing the same rows ``traitwatch run`` writes for its own runs:
one run row (``info.source: import``) and one row per complete checkpoint (path, sha256,
step, losses). Nothing is copied or loaded; the stages read the adapters where they are.
Importing again writes nothing that is already stored (same adapter at the same step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from traitwatch.errors import DataError, StoreError
from traitwatch.store import Store
from traitwatch.train import ADAPTER_FILE, file_sha256
from traitwatch.train._loop import STOPPED_FILE

from ._context import StudyContext
from ._layout import (
    FoundCheckpoint,
    checkpoint_root,
    checkpoint_row,
    find_checkpoints,
    identify_run,
    incomplete_reason,
    planned_total,
    record_checkpoint,
    run_design,
    trainer_state,
)


@dataclass
class ImportedRun:
    """What importing one run folder did."""

    run_id: str
    folder: Path
    steps: list[int] = field(default_factory=list)
    new: int = 0
    replaced: int = 0
    skipped: list[str] = field(default_factory=list)
    status: str = "trained"
    note: str | None = None


def run_folders(folder: Path) -> list[tuple[str | None, Path]]:
    """The runs in ``folder`` as (name, checkpoint folder): ``folder`` itself when it holds
    checkpoint folders (name None: its meta.json or its own name decides), else each subfolder
    that does, directly or in its ``checkpoints/`` (named after the subfolder)."""
    if not folder.is_dir():
        raise DataError("folder not found", where=str(folder), fix="give the folder that holds the checkpoint-N/ or step_NNNNNN/ folders")
    root = checkpoint_root(folder)
    if find_checkpoints(root):
        return [(folder.resolve().name if root != folder else None, root)]
    runs: list[tuple[str | None, Path]] = [(p.name, checkpoint_root(p)) for p in sorted(folder.iterdir()) if p.is_dir()]
    runs = [(name, p) for name, p in runs if find_checkpoints(p)]
    if not runs:
        raise DataError(
            "no checkpoint folders here (checkpoint-N/ or step_NNNNNN/), nor in its subfolders",
            where=str(folder),
            fix="give the folder a trainer saved its checkpoints in (a Trainer's output_dir), or a folder of such run folders",
        )
    return runs


def import_runs(
    ctx: StudyContext,
    store: Store,
    folder: Path,
    *,
    run_id: str | None = None,
    domain: str | None = None,
    level: str | None = None,
    seed: int | None = None,
) -> list[ImportedRun]:
    """Register every run under ``folder`` and its complete checkpoints in the store."""
    runs = run_folders(Path(folder))
    if run_id is not None and len(runs) > 1:
        raise DataError(
            f"--run-id names one run, and this folder holds {len(runs)} runs",
            where=str(folder),
            fix="leave out --run-id (each run is named after its folder), or import one run folder at a time",
        )
    return [_import_one(ctx, store, f, run_id=run_id, default_id=name, domain=domain, level=level, seed=seed) for name, f in runs]


def _import_one(
    ctx: StudyContext,
    store: Store,
    folder: Path,
    *,
    run_id: str | None,
    default_id: str | None,
    domain: str | None,
    level: str | None,
    seed: int | None,
) -> ImportedRun:
    folder = folder.resolve()
    found = find_checkpoints(folder)
    ident = identify_run(store, folder, found, kind="import", run_id=run_id, default_id=default_id)
    result = ImportedRun(ident.run_id, folder)
    if not ident.external:
        result.note = "already a run of this study (trained by `traitwatch run`); nothing to import"
        return result
    complete: list[FoundCheckpoint] = []
    for ck in found:
        reason = incomplete_reason(ck)
        if reason is None:
            complete.append(ck)
        else:
            result.skipped.append(f"{ck.path.name}: {reason}")
    if not complete:
        raise DataError(
            "no complete checkpoint here (each needs adapter_model.safetensors and adapter_config.json)",
            where=str(folder),
            fix="wait until the trainer has saved a checkpoint, or point at the right folder",
        )
    stored_info = (ident.stored or {}).get("info") or {}
    if ident.stored is not None and stored_info.get("source") != "import":
        # registered by a watcher or the Hugging Face callback: keep its row, add the checkpoints
        d, lv, sd = ident.stored["domain"], ident.stored["level"], ident.stored["seed"]
    else:
        d, lv, sd = run_design(ctx.spec, ident.run_id, domain, level, seed)
        total = planned_total(complete[-1]) or complete[-1].step
        store.upsert_run(
            run_id=ident.run_id,
            fingerprint=ident.fingerprint,
            domain=d,
            level=lv,
            seed=sd,
            model=str((ident.stored or {}).get("model") or ctx.spec.model.label()),
            dataset_sha="",
            n_train=0,
            n_heldout=0,
            total_steps=total,
            info={"source": "import", "dir": str(folder), "layout": complete[-1].layout},
        )
    history = trainer_state(complete[-1]).get("log_history") or []
    for ck in complete:
        try:
            sha = file_sha256(ck.path / ADAPTER_FILE)
        except OSError as exc:
            raise StoreError(f"cannot read the adapter ({exc.strerror})", where=str(ck.path / ADAPTER_FILE), fix="check the file") from None
        outcome = record_checkpoint(store, checkpoint_row(ident.run_id, ck, sha, history))
        result.new += outcome == "new"
        result.replaced += outcome == "replaced"
        result.steps.append(ck.step)
    result.status = "stopped_early" if (folder / STOPPED_FILE).exists() else "trained"
    current = next((r["status"] for r in store.runs() if r["run_id"] == ident.run_id), None)
    if current != result.status and (ident.stored is None or stored_info.get("source") == "import"):
        store.set_run_status(ident.run_id, result.status)
    if 0 not in result.steps:
        result.note = f"no step-0 checkpoint: the first one (step {result.steps[0]}) is each trait's baseline"
    return result
