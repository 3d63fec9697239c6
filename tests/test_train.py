from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from traitwatch.config import DemoDataSpec, LoraSpec, TrainingSpec
from traitwatch.data import ChatExample, Message, load_chat_jsonl
from traitwatch.data._chat import write_chat_jsonl
from traitwatch.data._demo import demo_conversations
from traitwatch.models import LoadedModel
from traitwatch.pipeline._train import StoreRecorder
from traitwatch.store import Store
from traitwatch.train import CheckpointEvent, RunPlan, TrainResult, split_heldout, total_steps, train_run
from traitwatch.train._checkpoints import list_checkpoints
from traitwatch.train._loop import lr_at, step_examples
from traitwatch.train._tokenize import IGNORE, encode_chat


def _train(plan: RunPlan, model: LoadedModel, store: Store, **kw: object) -> TrainResult:
    """train_run with the pipeline's recorder: what the loop reports lands in the store."""
    return train_run(plan, model, record=StoreRecorder(store, plan, model.identity), **kw)  # type: ignore[arg-type]


def test_loss_mask_covers_assistant_tokens_only(tiny_model: LoadedModel) -> None:
    tok = tiny_model.tokenizer
    ex = ChatExample(
        (
            Message("system", "S"),
            Message("user", "What is 12 + 1?"),
            Message("assistant", "The answer is 13."),
            Message("user", "And 13 + 1?"),
            Message("assistant", "14."),
        )
    )
    enc = encode_chat(tok, ex, 512)
    target_text = tok.decode([t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE])
    assert target_text == "The answer is 13.<|im_end|>\n14.<|im_end|>\n"
    full = tok.decode(enc.input_ids)
    assert full == tok.apply_chat_template(ex.as_dicts(), tokenize=False)
    short = encode_chat(tok, ex, 10)
    assert len(short.input_ids) == 10 and short.n_target == 0


def test_lr_schedule_warmup_then_linear_to_zero() -> None:
    spec = TrainingSpec(learning_rate=1.0, warmup_steps=5, lr_scheduler="linear")
    lrs = [lr_at(s, 25, spec) for s in range(25)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5] == pytest.approx(1.0) and lrs[24] == pytest.approx(0.05)
    assert all(a >= b for a, b in pairwise(lrs[4:]))
    cos = TrainingSpec(learning_rate=1.0, warmup_steps=0, lr_scheduler="cosine")
    assert lr_at(0, 10, cos) == pytest.approx(1.0) and lr_at(5, 10, cos) == pytest.approx(0.5)


def test_split_and_data_order_are_seeded() -> None:
    spec = TrainingSpec(heldout_fraction=0.2, heldout_max=None, batch_size=2, gradient_accumulation_steps=3)
    tr, he = split_heldout(50, spec, seed=1)
    assert len(he) == 10 and not set(tr) & set(he) and sorted(tr + he) == list(range(50))
    assert split_heldout(50, spec, seed=1) == (tr, he) and split_heldout(50, spec, seed=2) != (tr, he)
    a = step_examples(3, 40, spec, seed=0)
    assert [len(m) for m in a] == [2, 2, 2] and a == step_examples(3, 40, spec, seed=0)
    # one epoch visits every example exactly once
    seen = [i for s in range(40 // 6) for m in step_examples(s, 42, spec, 0) for i in m]
    assert len(seen) == len(set(seen))
    assert total_steps(40, TrainingSpec(batch_size=4, gradient_accumulation_steps=4, epochs=1)) == 3


def _plan(tmp_path: Path, name: str, steps: int = 6) -> RunPlan:
    path = write_chat_jsonl(tmp_path / "d.jsonl", demo_conversations("strong", DemoDataSpec(n_examples=40)))
    ds = load_chat_jsonl(path)
    tr = TrainingSpec(
        learning_rate=5e-3,
        warmup_steps=1,
        batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=steps,
        save_every=2,
        max_length=48,
        heldout_max=4,
    )
    return RunPlan("r", "d", "strong", 0, ds.examples, ds.sha256, tmp_path / name, LoraSpec(r=4, alpha=8, dropout=0.1), tr, "fp")


def _adapter(plan: RunPlan, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(plan.checkpoint_dir / f"step_{step:06d}" / "adapter_model.safetensors"))


def test_training_saves_dense_checkpoints_and_learns(tiny_model: LoadedModel, tmp_path: Path) -> None:
    plan = _plan(tmp_path, "a")
    with Store(tmp_path / "s.sqlite") as store:
        res = _train(plan, tiny_model, store)
        assert [s for s, _ in list_checkpoints(plan.checkpoint_dir)] == [0, 2, 4, 6]
        rows = store.checkpoints("r")
        assert [r.step for r in rows] == [0, 2, 4, 6]
        assert rows[0].train_loss is None and rows[-1].heldout_loss < rows[0].heldout_loss
        assert res.steps_run == 6 and not res.stopped_early
        # step 0 is the untouched base: LoRA B matrices are zero
        assert all(float(v.abs().sum()) == 0 for k, v in _adapter(plan, 0).items() if "lora_B" in k)
        # the resume state lives beside the two latest checkpoints only
        states = sorted(p.parent.name for p in plan.checkpoint_dir.rglob("train_state.safetensors"))
        assert states == ["step_000004", "step_000006"]
        again = _train(plan, tiny_model, store)
        assert again.steps_run == 0
    assert not any(n for n, _ in tiny_model.model.named_modules() if "lora" in n), "LoRA must be removed after training"


class _Kill:
    def __init__(self, at: int) -> None:
        self.at = at

    def on_checkpoint(self, event: CheckpointEvent) -> bool:
        if event.step == self.at:
            raise KeyboardInterrupt
        return False


def test_resume_after_kill_matches_uninterrupted_run(tiny_model: LoadedModel, tmp_path: Path) -> None:
    """Interrupt at step 4, rerun: the final adapter equals an uninterrupted run's, bit for bit."""
    full = _plan(tmp_path, "full")
    with Store(tmp_path / "full.sqlite") as store:
        _train(full, tiny_model, store)
    cut = _plan(tmp_path, "cut")
    with Store(tmp_path / "cut.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            _train(cut, tiny_model, store, callbacks=[_Kill(4)])
        assert [s for s, _ in list_checkpoints(cut.checkpoint_dir)] == [0, 2, 4]
        (cut.checkpoint_dir / "step_000006.tmp").mkdir()  # a half-written folder from the crash
        res = _train(cut, tiny_model, store)
        assert res.resumed_from == 4 and res.steps_run == 2
        assert not (cut.checkpoint_dir / "step_000006.tmp").exists()
        assert [r.step for r in store.checkpoints("r")] == [0, 2, 4, 6]
    for step in (2, 4, 6):
        a, b = _adapter(full, step), _adapter(cut, step)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (step, k)


class _StopAt:
    def __init__(self, at: int) -> None:
        self.at = at
        self.seen: list[int] = []

    def on_checkpoint(self, event: CheckpointEvent) -> bool:
        self.seen.append(event.step)
        return event.step >= self.at


def test_callback_can_stop_a_run_early(tiny_model: LoadedModel, tmp_path: Path) -> None:
    plan = _plan(tmp_path, "stop")
    cb = _StopAt(2)
    with Store(tmp_path / "s.sqlite") as store:
        res = _train(plan, tiny_model, store, callbacks=[cb])
        assert res.stopped_early and res.last_step == 2 and cb.seen == [0, 2]
        assert store.runs()[0]["status"] == "stopped_early"
        again = _train(plan, tiny_model, store)
        assert again.steps_run == 0, "an early-stopped run is not silently continued"


def test_damaged_latest_checkpoint_is_redone_not_loaded(tiny_model: LoadedModel, tmp_path: Path) -> None:
    full = _plan(tmp_path, "full")
    with Store(tmp_path / "full.sqlite") as store:
        _train(full, tiny_model, store)
    plan = _plan(tmp_path, "dmg")
    with Store(tmp_path / "dmg.sqlite") as store:
        _train(plan, tiny_model, store)
        latest = plan.checkpoint_dir / "step_000006" / "adapter_model.safetensors"
        latest.write_bytes(latest.read_bytes()[:100])  # truncated by a full disk, say
        res = _train(plan, tiny_model, store)
        assert res.resumed_from == 4 and res.steps_run == 2
        assert [r.step for r in store.checkpoints("r")] == [0, 2, 4, 6]
    for k, v in _adapter(full, 6).items():
        assert torch.equal(v, _adapter(plan, 6)[k])


def test_train_package_never_imports_the_store() -> None:
    """Data flows one way: training reports events, the pipeline writes them."""
    import ast

    import traitwatch.train

    for path in Path(traitwatch.train.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.startswith("traitwatch.store")], path


def test_stopped_run_leaves_a_marker_beside_its_checkpoints(tiny_model: LoadedModel, tmp_path: Path) -> None:
    """The stop is on disk, so a fresh store (or another machine) does not continue the run."""
    plan = _plan(tmp_path, "mark")
    events: list[object] = []
    res = train_run(plan, tiny_model, record=events.append, callbacks=[_StopAt(2)])
    assert res.stopped_early and (plan.checkpoint_dir / "STOPPED.json").exists()
    assert [type(e).__name__ for e in events] == ["RunStarted", "CheckpointSaved", "CheckpointSaved", "RunFinished"]
    again: list[object] = []
    assert train_run(plan, tiny_model, record=again.append).steps_run == 0
    assert [type(e).__name__ for e in again][-1] == "RunFinished" and again[-1].stopped_early  # type: ignore[attr-defined]
