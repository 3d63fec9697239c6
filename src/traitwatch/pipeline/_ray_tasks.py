"""What a Ray worker does for a study: train one run, answer every question for a block of
checkpoints, or score a batch with a judge that runs a model (a local LLM judge). Plain
functions; :mod:`._ray` wraps them with ``ray.remote`` and calls them.

Why they return results instead of writing them: the driver is the store's single writer (one
SQLite file on its local disk; SQLite over a network filesystem is not safe to share between
writers). A task reads the spec and the checkpoint folders (on a filesystem every worker can
read), does its work, and hands back what the driver then commits under the same content keys
as a local run, so a retried task can never write a row twice.

Why a model cache per process: Ray reuses a worker process for many tasks, so the base model
is loaded once per process and spec, not once per task (loading a 7B model takes longer than
answering a block of checkpoints). A training run attaches its LoRA to that copy and takes it
off again when done (``train_run``), so the next task finds the plain base model.

Why the thread count is set here: a task requests ``num_cpus`` from Ray; torch would otherwise
start one thread per core of the node and the tasks on one node would fight for the cores.
"""

from __future__ import annotations

import os
from typing import Any

from traitwatch.config import StudySpec
from traitwatch.generate import Answer, GenerationRequest
from traitwatch.judges import Budget, Judge, JudgeRequest, Judgment, build_judge
from traitwatch.models import LoadedModel, load_model
from traitwatch.train import TrainEvent, TrainResult, train_run

_MODELS: dict[str, LoadedModel] = {}
_JUDGES: dict[str, Judge] = {}


def _setup(threads: int) -> None:
    import torch

    os.environ.setdefault("TRAITWATCH_PROGRESS", "0")  # a worker's log is not a terminal
    torch.set_num_threads(max(1, threads))


def worker_base(spec: StudySpec, name: str | None = None) -> LoadedModel:
    """This process's copy of the study's base model, or of its model ``name`` in a study with
    several (``spec.base_models()``), loaded on first use. One model per process at a time: a
    worker asked for another model releases the one it held (models may not fit together)."""
    model = spec.model if name is None else dict(spec.base_models())[name]
    key = model.model_dump_json()
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model(model)
    return _MODELS[key]


def identity_task(spec: StudySpec, threads: int, name: str | None = None) -> str:
    """A base model's identity as a worker sees it (device and dtype are part of it), so the
    driver can compute run fingerprints and answer keys without loading the model itself."""
    _setup(threads)
    return worker_base(spec, name).identity


def train_task(spec: StudySpec, run_id: str, threads: int) -> tuple[list[TrainEvent], TrainResult]:
    """Train (or resume, or find finished) one run; returns its events and result.

    A retried task resumes from the run's latest checkpoint on disk and reports every
    checkpoint found there again, so the driver's record is complete whatever was lost.
    """
    from ._plan import model_of_run, plan_runs

    _setup(threads)
    name = model_of_run(spec, run_id)
    base = worker_base(spec, name)
    [plan] = [p for p in plan_runs(spec, {name: base.identity}) if p.run_id == run_id]
    events: list[TrainEvent] = []
    result = train_run(plan, base, record=events.append)
    return events, result


def generate_task(spec: StudySpec, requests: list[GenerationRequest], threads: int, model: str | None = None) -> list[Answer]:
    """Answers to ``requests`` (a block of checkpoints' questions, all of runs of base model
    ``model``) with the spec's generator."""
    _setup(threads)
    base = worker_base(spec, model)
    answers: list[Answer] = []
    generator_for(spec, base).generate(requests, answers.extend)
    return answers


def judge_task(spec: StudySpec, name: str, requests: list[JudgeRequest], threads: int) -> list[Judgment | None]:
    """Judgments of ``requests`` by the study's judge ``name`` (a judge that runs a model)."""
    _setup(threads)
    key = name + spec.model_dump_json()
    if key not in _JUDGES:
        jspec = next(j for j in spec.judges if j.name == name)
        _JUDGES[key] = build_judge(jspec, base=lambda: worker_base(spec), budget=Budget(None))
    return _JUDGES[key].judge(requests)


def generator_for(spec: StudySpec, base: LoadedModel) -> Any:
    """The spec's generation backend on ``base`` (as the local generate stage builds it)."""
    from ._context import StudyContext
    from ._generate import make_hf_generator

    if spec.generation.backend == "vllm":
        from traitwatch.generate import vllm_generator

        return vllm_generator(base, spec)
    return make_hf_generator(StudyContext(spec), base)
