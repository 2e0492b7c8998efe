"""Run a CircleCI workflow's jobs on this machine, the way CircleCI runs them, from .circleci/config.yml.

What is read from the file: the workflow's jobs, which of them run on a branch (`filters.branches`)
and with a context, their `requires` order, each job's executor environment and steps, and the
`commands:` a step invokes (expanded into their steps). What each step does here:

- `checkout`: the job's working directory is a fresh `git clone` of the repository, with a fresh HOME.
- `run`: `bash -eo pipefail -c COMMAND` in the clone (CircleCI's default shell), with `BASH_ENV`
  naming a file bash sources first, so `echo 'export X=1' >> "$BASH_ENV"` reaches every later step;
  `when: always` steps run after a failure too, `when: on_success` (the default) only without one;
  `no_output_timeout` (default 10 min) ends a step that prints nothing for that long.
- `restore_cache` / `save_cache`: the cached folders (`paths` of the job's `save_cache`) are
  one shared folder on this machine, linked into the fresh HOME, so each job's `make setup` finds
  uv's cache warm as CircleCI's restored cache would leave it; saving is then nothing to do.
- `persist_to_workspace` / `attach_workspace`: only the listed `paths` (under `root`) are copied
  into the workflow's workspace, and the workspace (every upstream job's layers) into the next
  clone at `at`.
- `store_artifacts`: the path must exist (CircleCI only warns when it does not; this says so).

Orb commands and other steps are not run: `run_workflow` refuses a job that has one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BUILT_IN_STEPS = (
    "checkout",
    "run",
    "restore_cache",
    "save_cache",
    "persist_to_workspace",
    "attach_workspace",
    "store_artifacts",
)
DEFAULT_NO_OUTPUT_TIMEOUT = 600.0  # CircleCI's default: 10 minutes without output ends a step


@dataclass
class StepResult:
    job: str
    name: str
    ok: bool
    seconds: float
    output: str = ""
    skipped: bool = False

    def __str__(self) -> str:
        state = "skipped" if self.skipped else "ok" if self.ok else "FAILED"
        return f"{self.job} / {self.name}: {state} ({self.seconds:.1f} s)"


@dataclass
class WorkflowRun:
    steps: list[StepResult] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def first_failure(self) -> StepResult | None:
        return next((s for s in self.steps if not s.ok), None)


def load_config(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def _runs_on(entry: dict[str, Any], branch: str) -> bool:
    branches = (entry.get("filters") or {}).get("branches") or {}
    only, ignore = branches.get("only"), branches.get("ignore")
    only = [only] if isinstance(only, str) else only
    ignore = [ignore] if isinstance(ignore, str) else ignore or []
    return (only is None or branch in only) and branch not in ignore


def workflow_jobs(config: dict[str, Any], workflow: str, branch: str, context: str) -> list[str]:
    """The workflow's jobs that run on `branch` with `context`, in an order `requires` allows."""
    chosen: dict[str, list[str]] = {}
    for item in config["workflows"][workflow]["jobs"]:
        name, entry = (item, {}) if isinstance(item, str) else next(iter(item.items()))
        contexts = entry.get("context") or []
        contexts = [contexts] if isinstance(contexts, str) else contexts
        if context in contexts and _runs_on(entry, branch):
            chosen[name] = list(entry.get("requires") or [])
    ordered: list[str] = []
    while len(ordered) < len(chosen):
        ready = [
            n
            for n, needs in chosen.items()
            if n not in ordered and all(r in ordered or r not in chosen for r in needs)
        ]
        if not ready:
            raise ValueError(f"jobs {sorted(set(chosen) - set(ordered))} require each other in a cycle")
        ordered.extend(ready)
    return ordered


def job_steps(config: dict[str, Any], job: str) -> list[tuple[str, Any]]:
    """The job's steps as (kind, arguments), with `commands:` invocations expanded into their steps."""
    commands = config.get("commands") or {}

    def expand(steps: list[Any]) -> list[tuple[str, Any]]:
        flat: list[tuple[str, Any]] = []
        for step in steps:
            kind, args = (step, {}) if isinstance(step, str) else next(iter(step.items()))
            if kind in commands:
                flat += expand(commands[kind]["steps"])
            else:
                flat.append((kind, args))
        return flat

    return expand(config["jobs"][job]["steps"])


def step_name(kind: str, args: Any) -> str:
    if kind == "run":
        if isinstance(args, str):
            return args.splitlines()[0]
        return str(args.get("name") or args["command"].splitlines()[0])
    return kind


def duration(text: str | int | None) -> float:
    """CircleCI's durations: `45m`, `1h`, `30s`, or seconds."""
    if text is None:
        return DEFAULT_NO_OUTPUT_TIMEOUT
    match = re.fullmatch(r"(\d+)([smh]?)", str(text).strip())
    if not match:
        raise ValueError(f"not a CircleCI duration: {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True, symlinks=True)
    else:
        shutil.copy2(source, target)


@dataclass
class CircleCi:
    """Runs jobs of `config` against the git repository `origin`, in folders under `workdir`.

    `environment(job, clone)` gives a job's variables besides BASH_ENV and HOME (CircleCI's
    built-ins, the context's, the machine's); `shared_cache` is the folder the caches map to;
    `after_step(home)` runs after every `run` step (a test's hook on what a step left in HOME);
    `report` prints progress.
    """

    config: dict[str, Any]
    origin: Path
    workdir: Path
    environment: Callable[[str, Path], dict[str, str]]
    shared_cache: Path
    after_step: Callable[[Path], None] = lambda home: None
    report: Callable[[str], None] = print

    @property
    def workspace(self) -> Path:
        return self.workdir / "workspace"

    def run_workflow(self, jobs: list[str]) -> WorkflowRun:
        """Run `jobs` in order; a failed job stops the workflow (its dependants do not start)."""
        for job in jobs:
            unknown = [k for k, _ in job_steps(self.config, job) if k not in BUILT_IN_STEPS]
            if unknown:
                raise ValueError(f"job {job}: the rehearsal cannot run the steps {unknown}")
        run = WorkflowRun()
        started = time.monotonic()
        for job in jobs:
            run.jobs.append(job)
            run.steps += self.run_job(job)
            if not run.ok:
                self.report(f"workflow stops: job {job} failed")
                break
        self.report(f"workflow: {', '.join(run.jobs)} in {time.monotonic() - started:.0f} s wall time")
        return run

    def run_job(self, job: str) -> list[StepResult]:
        folder = self.workdir / job
        clone, home = folder / "project", folder / "home"
        home.mkdir(parents=True)
        bash_env = folder / "bash_env"
        bash_env.touch()
        spec = self.config["jobs"][job]
        executor = (self.config.get("executors") or {}).get(spec.get("executor"), {})
        saved_paths = [
            path
            for kind, args in job_steps(self.config, job)
            if kind == "save_cache"
            for path in args.get("paths", [])
        ]
        results: list[StepResult] = []
        env: dict[str, str] = {}
        self.report(f"== job {job}")
        job_started = time.monotonic()
        for kind, args in job_steps(self.config, job):
            name = step_name(kind, args)
            when = args.get("when", "on_success") if isinstance(args, dict) else "on_success"
            failed = any(not r.ok for r in results)
            if (failed and when == "on_success") or (not failed and when == "on_fail"):
                results.append(StepResult(job, name, True, 0.0, skipped=True))
                continue
            started = time.monotonic()
            ok, output = True, ""
            if kind == "checkout":
                done = subprocess.run(
                    ["git", "clone", "-q", "--branch", "main", str(self.origin), str(clone)],
                    capture_output=True,
                    text=True,
                )
                ok, output = done.returncode == 0, done.stdout + done.stderr
                env = {
                    **{k: str(v) for k, v in (executor.get("environment") or {}).items()},
                    **self.environment(job, clone),
                    **{k: str(v) for k, v in (spec.get("environment") or {}).items()},
                    "HOME": str(home),
                    "BASH_ENV": str(bash_env),
                }
            elif kind == "run":
                command = args if isinstance(args, str) else args["command"]
                timeout = duration(None if isinstance(args, str) else args.get("no_output_timeout"))
                ok, output = self._bash(command, clone, env, timeout, folder / "logs" / f"{len(results)}.log")
                self.after_step(home)
            elif kind == "restore_cache":
                for path in saved_paths:
                    target = Path(path.replace("~", str(home), 1))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(self.shared_cache, target_is_directory=True)
                output = f"{', '.join(saved_paths)} -> {self.shared_cache} (shared, used in place)"
            elif kind == "save_cache":
                output = "nothing to save: the cache folder is the shared one"
            elif kind == "persist_to_workspace":
                root = clone / args.get("root", ".")
                missing = [p for p in args["paths"] if not (root / p).exists()]
                ok = not missing
                output = f"missing: {missing}" if missing else f"persisted {args['paths']}"
                for path in args["paths"]:
                    if (root / path).exists():
                        _copy(root / path, self.workspace / path)
            elif kind == "attach_workspace":
                target = clone / args.get("at", ".")
                if self.workspace.exists():
                    for item in self.workspace.iterdir():
                        _copy(item, target / item.name)
                output = f"attached {sorted(p.name for p in self.workspace.iterdir())}"
            elif kind == "store_artifacts":
                ok = (clone / args["path"]).exists()
                output = f"{args['path']} {'found' if ok else 'not found: no artifacts'}"
            result = StepResult(job, name, ok, time.monotonic() - started, output)
            results.append(result)
            self.report(f"   {result}")
            if not ok:
                tail = "\n".join(output.strip().splitlines()[-40:])
                self.report("   | " + tail.replace("\n", "\n   | "))
        state = "ok" if all(r.ok for r in results) else "FAILED"
        self.report(f"== job {job}: {state} in {time.monotonic() - job_started:.0f} s")
        return results

    def _bash(
        self, command: str, cwd: Path, env: dict[str, str], timeout: float, log: Path
    ) -> tuple[bool, str]:
        """Run the step; end it (and what it started) after `timeout` seconds without output."""
        log.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            ["bash", "-eo", "pipefail", "-c", command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        lines: list[str] = []
        last = [time.monotonic()]

        def read() -> None:
            assert process.stdout is not None
            with log.open("w") as sink:
                for raw in process.stdout:
                    line = raw.decode("utf-8", "replace")
                    lines.append(line)
                    sink.write(line)
                    last[0] = time.monotonic()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while process.poll() is None:
            if time.monotonic() - last[0] > timeout:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                lines.append(
                    f"Too long with no output (exceeded {timeout:.0f} s): context deadline exceeded\n"
                )
                break
            time.sleep(0.2)
        reader.join(10)
        return process.returncode == 0, "".join(lines)
