"""`make train-pilot`: the vampire and zombie adapters the hot path uses (dialogue_style and
action_policy), trained on CPU, evaluated against the base model and promoted through their
gates, in one foreground run with progress bars. Figures go to var/pilot/figures.json (and one
JSON line per adapter on stdout).

It prepares what it needs the way `make run` does (Redis, migrations, the demo world and its
lore, the base model) and starts a vLLM worker for the evaluation unless one answers already.
The pilot's designer examples (training/pilot/examples.json) are added to the archetypes once;
designers see and edit them on the archetype pages.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from django import db
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from console import localstack
from console.jobs.models import JobStatus
from console.models import Adapter, AdapterStatus, AdapterTask, Archetype
from console.supervisor import Supervisor
from inference.workers import worker_health
from training.datasets import dataset_build
from training.eval.harness import eval_run_create, eval_run_execute
from training.jobs import training_job_abandon, training_job_create, training_job_run
from training.models import ExampleExchange

PILOT = (("vampire", AdapterTask.DIALOGUE_STYLE), ("vampire", AdapterTask.ACTION_POLICY),
         ("zombie", AdapterTask.DIALOGUE_STYLE), ("zombie", AdapterTask.ACTION_POLICY))  # fmt: skip
EXAMPLES = Path(__file__).resolve().parents[2] / "pilot" / "examples.json"
# Steps per adapter: sized so the four adapters train and evaluate in under 30 minutes on 2
# CPU cores with the bundled 135M model (see docs/training.md for the measured times).
STEPS: dict[str, int] = {AdapterTask.DIALOGUE_STYLE: 80, AdapterTask.ACTION_POLICY: 80}
# Dialogue at the jobs' default: a first pilot at 4e-3 collapsed into a few stock openings
# ("Bye..."). Action answers are a few tokens of JSON and take a higher rate without harm.
LEARNING_RATE: dict[str, float] = {AdapterTask.DIALOGUE_STYLE: 2e-3, AdapterTask.ACTION_POLICY: 3e-3}


def pilot_selected(only: list[str]) -> list[tuple[str, str]]:
    """The pilot adapters `--only` names (all of them when it names none)."""
    chosen: list[tuple[str, str]] = [
        (slug, task) for slug, task in PILOT
        if not only or any(pick in (slug, f"{slug}:{task}") for pick in only)
    ]  # fmt: skip
    unknown = [pick for pick in only if not any(pick in (slug, f"{slug}:{task}") for slug, task in PILOT)]
    if unknown:
        names = ", ".join(f"{slug}:{task}" for slug, task in PILOT)
        raise CommandError(f"--only {unknown[0]!r} names no pilot adapter; choose from {names}")
    return chosen


def pilot_candidate(slug: str, task: str) -> dict[str, Any]:
    """The newest candidate adapter of one pilot (for --skip-training), as _train_one reports it."""
    adapter = (
        Adapter.objects.filter(archetype__slug=slug, task=task, status=AdapterStatus.CANDIDATE)
        .order_by("-created_at")
        .first()
    )
    if adapter is None:
        raise CommandError(f"{slug} {task} has no candidate adapter to evaluate: run without --skip-training")
    return {
        "archetype": slug,
        "task": task,
        "adapter": str(adapter),
        "adapter_id": adapter.pk,
        "trained": False,
    }


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def pilot_examples_add() -> int:
    """The pilot's designer exchanges, added once (matched on archetype, task and words)."""
    added = 0
    for slug, tasks in json.loads(EXAMPLES.read_text(encoding="utf-8")).items():
        archetype = Archetype.objects.get(slug=slug)
        for task, pairs in tasks.items():
            for player, answer in pairs:
                field = "action" if task == AdapterTask.ACTION_POLICY else "reply"
                _, created = ExampleExchange.objects.get_or_create(
                    archetype=archetype, task=task, player=player, defaults={field: answer}
                )
                added += created
    return added


class Command(BaseCommand):
    help = (
        "Train, evaluate and promote the vampire and zombie pilot adapters (dialogue_style, action_policy)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--steps-scale", type=float, default=1.0, help="Multiply every adapter's steps.")
        parser.add_argument("--eval-prompts", type=int, default=8, help="Prompts per part of each eval.")
        parser.add_argument(
            "--skip-training", action="store_true",
            help="Evaluate (and promote) each pilot adapter's newest candidate instead of training.",
        )  # fmt: skip
        parser.add_argument(
            "--only", action="append", default=[], metavar="ARCHETYPE[:TASK]",
            help="Just these pilot adapters (repeatable), e.g. zombie or zombie:action_policy.",
        )  # fmt: skip

    def handle(
        self, *args: Any, steps_scale: float, eval_prompts: int, only: list[str], skip_training: bool,
        **options: Any,
    ) -> None:  # fmt: skip
        pilot = pilot_selected(only)
        started = time.monotonic()
        signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM cleans up as Ctrl-C does
        try:
            redis_state = localstack.redis_ensure(settings.REDIS_URL)
        except localstack.LocalServiceError as exc:
            raise CommandError(str(exc)) from exc
        if not localstack.port_is_free("127.0.0.1", 8000):
            self.stdout.write(self.style.WARNING("make run seems to be running: the pilot shares its worker"))
        call_command("migrate", interactive=False, verbosity=0)
        call_command("seed_demo")
        call_command("ingest", str(Path(settings.DEMO_DIR) / "lore"), world="ravenmoor")
        call_command("bootstrap_model")
        self.stdout.write(f"pilot examples: {pilot_examples_add()} added")
        supervisor = Supervisor(log_dir=localstack.VAR_DIR / "log", cwd=localstack.PROJECT_DIR)
        url = settings.INFERENCE_WORKERS[0]
        figures: list[dict[str, Any]] = []
        try:
            # All four train before the worker starts: an idle vLLM CPU engine keeps a core busy
            # polling, and on 2 cores that is half of what training has.
            if skip_training:
                trained = [pilot_candidate(slug, task) for slug, task in pilot]
            else:
                trained = [self._train_one(slug, task, steps_scale=steps_scale) for slug, task in pilot]
            if not worker_health(url).healthy:
                self.stdout.write(f"Starting a vLLM worker at {url} for the evaluations (30-90 s on CPU)…")
                argv = [sys.executable, "manage.py", "run_worker", "--url", url]
                worker = supervisor.start("vllm-worker-pilot", argv)
                supervisor.wait_until(worker, lambda: worker_health(url).healthy, timeout_s=300)
            call_command("adapters_sync")
            # All evals at once: the worker batches their requests, and each dialogue eval is
            # mostly a 20-turn conversation, one turn at a time, that leaves the engine idle.
            self.stdout.write(f"Evaluating {len(trained)} adapters, each against its baseline, at once…")
            with ThreadPoolExecutor(len(trained)) as pool:
                pending = [
                    pool.submit(self._evaluate_one, figure, eval_prompts=eval_prompts) for figure in trained
                ]
                for future in pending:
                    figures.append(future.result())
                    self.stdout.write(json.dumps(figures[-1]))
        finally:
            supervisor.stop_all()
            if localstack.embedded_postgres_started_here():
                localstack.embedded_postgres_stop()
            if redis_state == "started":
                localstack.redis_shutdown(settings.REDIS_URL)
        total = round(time.monotonic() - started, 1)
        out = localstack.VAR_DIR / "pilot"
        out.mkdir(parents=True, exist_ok=True)
        # A partial run (--only, --skip-training) keeps the last whole run's figures.
        written = out / ("figures-partial.json" if only or skip_training else "figures.json")
        written.write_text(
            json.dumps(
                {"total_s": total, "only": only, "skip_training": skip_training, "adapters": figures},
                indent=2,
            )
        )
        self.stdout.write(self.style.SUCCESS(f"pilot done in {total / 60:.1f} min; figures in {written}"))
        if not all(figure["promoted"] for figure in figures):
            self.stdout.write(
                self.style.WARNING("not every pilot adapter passed its gate: see the eval pages")
            )

    def _train_one(self, slug: str, task: str, *, steps_scale: float) -> dict[str, Any]:
        archetype = Archetype.objects.get(slug=slug)
        dataset = dataset_build(archetype=archetype, task=task)
        steps = max(1, round(STEPS[task] * steps_scale))
        job = training_job_create(
            dataset=dataset, steps=steps, learning_rate=LEARNING_RATE[task], evaluate=False
        )
        began = time.monotonic()
        try:
            with tqdm(total=steps, desc=f"{slug} {task}", unit="step") as bar:
                done = training_job_run(job.pk, on_step=lambda step, _total: bar.update(step - bar.n))
        except KeyboardInterrupt:
            # The job ran here, not on a worker: left `running`, beat would resume it on the next
            # `make run` and promote an adapter nobody is watching.
            training_job_abandon(job.pk, "make train-pilot was interrupted")
            raise
        trained_s = time.monotonic() - began
        if done is None or done.status != JobStatus.SUCCEEDED or done.adapter is None:
            raise CommandError(f"training {slug} {task} failed: {done.error if done else 'no job'}")
        return {
            "archetype": slug, "task": task, "examples": dataset.train_examples,
            "heldout": dataset.heldout_examples,
            "steps": steps, "train_s": round(trained_s, 1), "s_per_step": round(trained_s / steps, 2),
            "final_loss_avg10": round(sum(done.losses[-10:]) / len(done.losses[-10:]), 3),
            "adapter": str(done.adapter), "adapter_id": done.adapter.pk,
        }  # fmt: skip

    def _evaluate_one(self, trained: dict[str, Any], *, eval_prompts: int) -> dict[str, Any]:
        """One eval, in a thread of its own (its own database connection, closed at the end)."""
        began = time.monotonic()
        try:
            adapter = Adapter.objects.get(pk=trained["adapter_id"])
            run = eval_run_execute(eval_run_create(adapter=adapter), limit=eval_prompts)
            self.stdout.write(
                f"{trained['archetype']} {trained['task']}: eval {run.status}, passed {run.passed}"
            )
        finally:
            db.connection.close()
        return {
            **trained,
            "eval_s": round(time.monotonic() - began, 1), "eval_status": run.status,
            "candidate": run.candidate_metrics, "base": run.baseline_metrics, "baseline": run.baseline,
            "passed": run.passed, "promoted": run.promoted, "eval_run": run.pk,
        }  # fmt: skip
