"""`edge up`: the main job on embedded defaults, from raw data to a model you can talk to."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Annotated

import typer

from edge import verdict
from edge.cli.common import console, fail, friendly_errors, out
from edge.cli.data import seed_data
from edge.data import DEFAULT_RAW_DIR, RAW_FILES
from edge.model import ModelIntegrityError, verify_model_uri

MODEL_DIR = "models"
# The quick demo model: its own settings (fewer epochs, a smaller network, its own floors) and its
# own folder, so it never replaces the default model or DVC's outputs.
QUICK_PARAMS = "params-quick.yaml"
QUICK_DIR = "quick"
HEALTH_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0
# Each server's output, also shown in the terminal with its name in front (gitignored).
LOG_DIR = Path("logs")
# Both servers' lines go to one terminal: one at a time, never interleaved mid-line.
_output_lock = threading.Lock()


@dataclass
class Service:
    """A server process we started, in its own process group so we can stop all of it."""

    name: str
    url: str
    log: Path
    process: subprocess.Popen[bytes]
    copier: threading.Thread

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> bool:
        """Stop the server and everything it started; tell whether it was still running."""
        if self.process.poll() is not None:
            return False
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.copier.join(STOP_TIMEOUT)
        return True

    def died(self, when: str) -> str:
        """One line saying that this server exited, how, and where its log is."""
        self.copier.join(5)  # its last lines first, so the error below is the last thing shown
        code = self.process.returncode
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        return (
            f"the {self.name} (pid {self.process.pid}) {how} {when}; its log is {self.log} "
            f"(its last lines are above, marked '{self.name} |')"
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal has no name
        return f"signal {number}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        # As the servers bind: a port whose last connections linger in TIME_WAIT (an `edge up`
        # stopped a moment ago) is free; one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _check_ports(host: str, ports: dict[str, tuple[int, str, str]]) -> None:
    """Fail before any work when a port is taken, naming the option that chooses another."""
    (model, *_), (webapp, *_) = ports.values()
    if model == webapp:
        fail(f"the model server and the webapp cannot share port {model}: give them different ports")
    for name, (port, option, envvar) in ports.items():
        if not _port_free(host, port):
            fail(
                f"port {port} on {host} is in use (another program, or an `edge up` still running); "
                f"stop it, or choose another port for the {name}: {option} PORT, or {envvar}=PORT "
                f"(e.g. `{envvar}={port + 1} make up`)"
            )


def _copy_output(name: str, stream: IO[bytes], log: Path) -> None:
    """Append the server's output to its log and show it in the terminal, each line marked with its name."""
    with log.open("ab") as file:
        for line in stream:
            file.write(line)
            file.flush()
            with _output_lock:
                sys.stderr.write(f"{name} | {line.decode(errors='replace')}")
                sys.stderr.flush()


def _start(name: str, argv: list[str], host: str, port: int, env: dict[str, str]) -> Service:
    LOG_DIR.mkdir(exist_ok=True)
    log = LOG_DIR / f"{name.replace(' ', '-')}.log"
    log.write_bytes(b"")
    # Unbuffered, so a line reaches the log (and the terminal) when it is written, not at exit.
    env = dict(env, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    assert process.stdout is not None
    copier = threading.Thread(target=_copy_output, args=(name, process.stdout, log), daemon=True)
    copier.start()
    console.print(f"Started the {name} (pid {process.pid}); its log: {log}.")
    return Service(name, f"http://{host}:{port}", log, process, copier)


def _train_quick() -> None:
    """Train the quick demo model into quick/ (no DVC: it is not the pipeline's model)."""
    console.print(f"Training the quick demo model ({QUICK_PARAMS}) into {QUICK_DIR}/...")
    argv = [sys.executable, "-m", "edge", "pipeline", "run", "--params", QUICK_PARAMS]
    argv += ["--prepared-dir", f"{QUICK_DIR}/prepared", "--model-dir", f"{QUICK_DIR}/models"]
    argv += ["--reports-dir", f"{QUICK_DIR}/reports"]
    if _edge_subprocess(argv) != 0:
        _fail_pipeline(f"{QUICK_DIR}/models")


def _train() -> None:
    """Run the pipeline through DVC, which skips every stage whose inputs did not change."""
    if Path(".dvc").is_dir():
        console.print("Running the pipeline (dvc repro; unchanged stages are skipped)...")
        if _edge_subprocess([sys.executable, "-m", "dvc", "repro"]) != 0:
            _fail_pipeline(MODEL_DIR)
    else:
        console.print("Not in a DVC repository: running the pipeline directly.")
        if _edge_subprocess([sys.executable, "-m", "edge", "pipeline", "run"]) != 0:
            _fail_pipeline(MODEL_DIR)


def _edge_subprocess(argv: list[str]) -> int:
    # The stages call `edge`: find ours even when its virtualenv is not activated.
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    return subprocess.run(argv, env=env).returncode


def _fail_pipeline(model_dir: str) -> None:
    """Stop with what to do: the model's failed checks when its test suite failed it."""
    try:
        judged = verdict.read(model_dir, verify_model_uri(model_dir))
    except (ModelIntegrityError, OSError):
        judged = None
    if judged is not None and not judged.passed:
        fail(_what_to_do(judged, model_dir))
    fail("the pipeline failed (see above); fix it, then run `make up` again")


def _what_to_do(judged: verdict.Verdict, model_dir: str) -> str:
    """Which checks failed, why each matters, and the ways on that work in this folder."""
    checks = "\n".join(
        f"  - {failed.describe()}" + (f": {failed.why}" if failed.why else "") for failed in judged.failed
    )
    if model_dir == MODEL_DIR:
        ways = [
            "train with another seed: `dvc exp run -S train.seed=1`, then `make up` again (the pipeline "
            "is then up to date)",
            *_way_back(judged.model_version),
            "serve this one knowingly: `edge up --no-train --allow-failed-model` (/health, every answer "
            "and the webapp then say it failed)",
        ]
        report = "reports/evaluate/model-card.md"
    else:  # the quick demo model: no DVC, its own params file
        ways = [
            f"train with another seed: change train.seed in {QUICK_PARAMS}, then `edge up --quick` again",
            "serve this one knowingly: `edge up --quick --no-train --allow-failed-model`",
        ]
        report = f"{QUICK_DIR}/reports/evaluate/model-card.md"
    listed = "".join(f"  - {way};\n" for way in ways[:-1]) + f"  - {ways[-1]}.\n"
    return (
        f"the model was trained but failed its test suite, so it is not served.\n"
        f"Model {judged.model_version} failed {len(judged.failed)} check(s):\n{checks}\n"
        f"Ways on:\n{listed}Its full report: {report}"
    )


def _way_back(failed_version: str) -> list[str]:
    """The way back to the committed model where this clone has it, or why it has not.

    `dvc checkout` of a model that is not in DVC's cache fails, and on its way removes the model in
    models/ (which stays in the cache, but the restored dvc.lock no longer names it): so the way is
    offered only where it works. A fresh clone with no remote holds only the models it trained.
    """
    if not Path(".dvc").is_dir():
        return []
    back = "git checkout HEAD -- dvc.lock reports && dvc"
    remote = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "default"], capture_output=True, text=True
    )
    if remote.returncode == 0 and remote.stdout.strip():
        return [
            f"go back to the committed model: `{back} pull {MODEL_DIR}` (from the DVC remote "
            f"{remote.stdout.strip()})"
        ]
    committed = _committed_model_version()
    if committed is None:
        return [
            "the committed model is not at hand: neither this clone's DVC cache nor a DVC remote holds "
            f"it; once a remote that has it is set (docs/data.md), `{back} pull {MODEL_DIR}` brings it back"
        ]
    if committed == failed_version:
        return []
    return [f"go back to the committed model {committed}: `{back} checkout {MODEL_DIR}` (from DVC's cache)"]


def _committed_model_version() -> str | None:
    """The version of the model HEAD's dvc.lock names, if every file of it is in DVC's cache."""
    # Imported here: DVC takes a second to import, and only a failed model needs it.
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException
    from dvc_data.index import DataIndexError

    try:
        committed = DVCFileSystem(".", rev="HEAD")
        for path in committed.find(MODEL_DIR):
            with committed.open(path, "rb") as file:
                file.read(1)
        metadata = json.loads(committed.read_text(f"{MODEL_DIR}/metadata.json"))
    except (DvcException, DataIndexError, OSError, ValueError):
        return None
    version = metadata.get("version") if isinstance(metadata, dict) else None
    return str(version) if version else None


def _check_model(model_dir: str, allow_failed: bool, judge: bool) -> None:
    """Serve only a model that passed its test suite; judge one that has no verdict here yet."""
    try:
        metadata = verify_model_uri(model_dir)
    except (ModelIntegrityError, OSError) as exc:
        fail(f"{exc}; run `make up` to train one")
    judged = verdict.read(model_dir, metadata)
    if judged is None and judge:
        # A model from `dvc pull` or `dvc checkout`: DVC keeps no verdicts, the evaluate stage does.
        console.print(f"Model {metadata['version']} has no verdict here yet: running its test suite...")
        _edge_subprocess([sys.executable, "-m", "edge", "pipeline", "evaluate", "--model-dir", model_dir])
        judged = verdict.read(model_dir, metadata)
    if allow_failed or (judged is not None and judged.passed):
        if judged is None or not judged.passed:
            console.print(
                f"[yellow]warning:[/] serving model {metadata['version']}, which "
                f"{'failed its test suite' if judged else 'was never judged'}, because of "
                "--allow-failed-model",
                highlight=False,
            )
        return
    if judged is None:
        fail(
            f"model {metadata['version']} in {model_dir} has not been judged by its test suite: run "
            "`make up` (without --no-train) or `edge pipeline evaluate`, or serve it knowingly with "
            "`edge up --no-train --allow-failed-model`"
        )
    fail(_what_to_do(judged, model_dir))


def up(
    model_port: Annotated[int, typer.Option(envvar="EDGE_MODEL_PORT", help="Model server port.")] = 8080,
    webapp_port: Annotated[int, typer.Option(envvar="EDGE_WEBAPP_PORT", help="Webapp port.")] = 8000,
    host: Annotated[str, typer.Option(help="Address both servers bind.")] = "127.0.0.1",
    source: Annotated[
        str | None, typer.Option(envvar="EDGE_DATA_SOURCE", help="Local folder to seed the data from.")
    ] = None,
    train: Annotated[
        bool, typer.Option(help="Run the pipeline first (--no-train: serve models/ as is).")
    ] = True,
    allow_failed_model: Annotated[
        bool,
        typer.Option(
            "--allow-failed-model",
            help="Serve the model even if it failed its test suite; /health, answers and the webapp say so.",
        ),
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help=f"Train and serve the quick demo model ({QUICK_PARAMS}, about a minute of training, its "
            f"own floors) from {QUICK_DIR}/ instead of the default model.",
        ),
    ] = False,
) -> None:
    """Seed the data, run the pipeline, then serve the model and the webapp until Ctrl-C.

    Ctrl-C (or SIGTERM) stops both servers and exits 0; if either server dies, `edge up` says which
    and where its log is, stops the other and exits 1.
    """
    _check_ports(
        host,
        {
            "model server": (model_port, "--model-port", "EDGE_MODEL_PORT"),
            "webapp": (webapp_port, "--webapp-port", "EDGE_WEBAPP_PORT"),
        },
    )
    if train:
        if all((DEFAULT_RAW_DIR / f.name).is_file() for f in RAW_FILES):
            console.print(f"The raw data is in {DEFAULT_RAW_DIR}; DVC tracks any change to it.")
        else:
            with friendly_errors():
                seed_data(DEFAULT_RAW_DIR, source)
        if quick:
            _train_quick()
        else:
            _train()
    model_dir = f"{QUICK_DIR}/models" if quick else MODEL_DIR
    _check_model(model_dir, allow_failed_model, judge=train and not quick)

    stopping: list[int] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    model_argv = [sys.executable, "-m", "edge", "serve", "--model-dir", model_dir]
    model_argv += ["--host", host, "--port", str(model_port)]
    if allow_failed_model:
        model_argv.append("--allow-failed-model")
    # As in the webapp's image: one process, 8 threads; waitress holds slow clients, never a thread.
    webapp_argv = [sys.executable, "-m", "edge_webapp", "--host", host, "--port", str(webapp_port)]
    webapp_argv += ["--threads", "8", "--channel-timeout", "30"]
    # Log predictions to predictions/ (gitignored) unless told otherwise, as compose does, so
    # `edge monitor report` has traffic to compare with the model's reference profile.
    model_env = dict(os.environ)
    model_env.setdefault("EDGE_MONITOR_LOG", "predictions")
    services = [_start("model server", model_argv, host, model_port, model_env)]
    services.append(
        _start("webapp", webapp_argv, host, webapp_port, dict(os.environ, MODEL_URL=services[0].url))
    )
    try:
        _wait_healthy(services, stopping)
        if not stopping:
            _announce(services)
            _watch(services, stopping)
    finally:
        stopped = [service.name for service in reversed(services) if service.stop()]
        if stopped:
            console.print(f"Stopped the {' and the '.join(reversed(stopped))}.")


def _wait_healthy(services: list[Service], stopping: list[int]) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT
    pending = list(services)
    while pending and not stopping:
        for service in list(pending):
            if service.process.poll() is not None:
                fail(service.died("before it was healthy"))
            if service.healthy():
                pending.remove(service)
        if time.monotonic() > deadline:
            names = " and ".join(s.name for s in pending)
            fail(f"the {names} did not become healthy within {HEALTH_TIMEOUT:.0f} s")
        time.sleep(0.5)


def _announce(services: list[Service]) -> None:
    model, webapp = services
    out.print(f"\n[bold green]Edge is up.[/]\n  webapp        {webapp.url}/")
    out.print(f"  model API     {model.url}/predict  (OpenAPI: {model.url}/openapi.json)")
    out.print(f"  metrics       {model.url}/metrics\nPress Ctrl-C to stop.\n", highlight=False)


def _watch(services: list[Service], stopping: list[int]) -> None:
    while not stopping:
        for service in services:
            if service.process.poll() is not None:
                fail(service.died("while Edge was up"))
        time.sleep(0.5)
