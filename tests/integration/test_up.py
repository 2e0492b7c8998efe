"""`edge up` looks after its servers: one dying, Ctrl-C, a port already taken.

These serve a tiny saved model with `--no-train`, so they exercise the supervision (not the
pipeline, which tests/integration/test_pipeline_dvc.py runs through `edge up` once).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.datagen import NO_AUGMENTATION, write_fashion_files
from tests.live_servers import free_port
from tests.verdicts import judge

START_TIMEOUT = 180.0  # TensorFlow starts slowly on a busy two-core machine
EXIT_TIMEOUT = 60.0


def session_members(session: int) -> set[int]:
    """Every live process whose session is `session` (edge up starts each server in its own)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session and fields[0] != "Z":
            members.add(int(entry.name))
    return members


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent's wait() is missing.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Up:
    """A running `edge up` and what it printed so far (stdout and stderr together)."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.5)  # the reader's last lines
                raise AssertionError(f"edge up never printed {text!r}:\n{self.output}")
            time.sleep(0.1)

    def servers(self) -> dict[str, int]:
        """Server name -> pid, as edge up announced them."""
        return {name: int(pid) for name, pid in re.findall(r"Started the (.+?) \(pid (\d+)\)", self.output)}

    def finish(self, timeout: float = EXIT_TIMEOUT) -> int:
        code = self.process.wait(timeout)
        time.sleep(0.2)  # let the reader drain the pipe
        return code


def _read(stream: Iterator[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A folder with a saved model in models/, as after a first `edge up`."""
    shutil.copytree(tiny_model_dir, tmp_path / "models")
    return tmp_path


def launch(project: Path, *extra: str) -> Up:
    """Start `edge up --no-train` on free ports in `project`, reading its output as it comes."""
    argv = [sys.executable, "-m", "edge", "up", "--no-train", *extra]
    argv += ["--model-port", str(free_port()), "--webapp-port", str(free_port())]
    env = {**os.environ, "COLUMNS": "200"}  # one error per line, as wide terminals show it
    process = subprocess.Popen(
        argv, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    running = Up(process)
    assert process.stdout is not None
    threading.Thread(target=_read, args=(process.stdout, running.lines), daemon=True).start()
    return running


def clean_up(running: Up) -> None:
    """Stop what a failed test left running: edge up by its PID, then its servers' sessions."""
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(EXIT_TIMEOUT)
    for pid in running.servers().values():
        for member in session_members(pid):
            os.kill(member, signal.SIGKILL)


@pytest.fixture
def up(project: Path) -> Iterator[Up]:
    """`edge up --no-train`, both servers healthy."""
    running = launch(project)
    try:
        running.wait_for("Press Ctrl-C to stop")
        yield running
    finally:
        clean_up(running)


def assert_all_gone(sessions: dict[int, set[int]]) -> None:
    for leader, members in sessions.items():
        survivors = [pid for pid in members if alive(pid)] + sorted(session_members(leader))
        assert not survivors, f"processes {survivors} of the server {leader} outlived edge up"


def test_a_server_that_dies_stops_the_other_and_fails(up: Up, project: Path) -> None:
    # The webapp dying is the same code path; one server start (~10 s of CPU) is spared.
    dying = "model server"
    servers = up.servers()
    assert set(servers) == {"model server", "webapp"}
    sessions = {pid: session_members(pid) for pid in servers.values()}
    assert all(servers[name] in sessions[servers[name]] for name in servers)

    os.kill(servers[dying], signal.SIGKILL)
    code = up.finish()

    assert code == 1, up.output
    log = f"logs/{dying.replace(' ', '-')}.log"
    error = (
        f"error: the {dying} (pid {servers[dying]}) was killed by SIGKILL while Edge was up; its log is {log}"
    )
    assert error in up.output, up.output
    [survivor] = set(servers) - {dying}
    assert f"Stopped the {survivor}." in up.output
    assert_all_gone(sessions)
    # The log holds what the dead server printed, as the terminal showed it.
    assert (project / log).read_text().strip(), f"{log} is empty"
    assert f"{dying} | " in up.output


def test_ctrl_c_stops_both_servers_and_exits_0(up: Up, project: Path) -> None:
    servers = up.servers()
    sessions = {pid: session_members(pid) for pid in servers.values()}
    ports = [int(port) for port in re.findall(r"http://127\.0\.0\.1:(\d+)/", up.output)][:2]

    up.process.send_signal(signal.SIGINT)
    code = up.finish()

    assert code == 0, up.output
    assert "Stopped the model server and the webapp." in up.output
    assert not [line for line in up.lines if line.startswith("error:")], up.output
    assert_all_gone(sessions)
    for port in ports:  # nothing listens any more: the next `edge up` can bind them
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))


def test_ctrl_c_while_the_servers_start_stops_both(project: Path) -> None:
    """Ctrl-C before the model server is healthy (it loads TensorFlow for a while): nothing is left."""
    running = launch(project)
    try:
        running.wait_for("Started the webapp")
        servers = running.servers()
        sessions = {pid: session_members(pid) for pid in servers.values()}
        running.process.send_signal(signal.SIGINT)
        code = running.finish()
    finally:
        clean_up(running)
    assert code == 0, running.output
    assert "Edge is up." not in running.output
    assert "Stopped the model server and the webapp." in running.output
    assert_all_gone(sessions)


def run_up(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    argv = [sys.executable, "-m", "edge", "up", *args]
    return subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("busy", "option", "envvar"),
    [("model", "--model-port", "EDGE_MODEL_PORT"), ("webapp", "--webapp-port", "EDGE_WEBAPP_PORT")],
)
def test_a_port_in_use_is_named_before_anything_runs(
    tmp_path: Path, busy: str, option: str, envvar: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"model": free_port(), "webapp": free_port(), busy: port}
        # With training on: it must fail before seeding or training anything.
        done = run_up(tmp_path, "--model-port", str(ports["model"]), "--webapp-port", str(ports["webapp"]))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: port {port} on 127.0.0.1 is in use" in done.stderr
    assert f"{option} PORT, or {envvar}=PORT" in done.stderr
    assert "Traceback" not in done.stderr and "Started" not in done.stderr
    assert list(tmp_path.iterdir()) == [], "edge up seeded, trained or logged before checking its ports"


def test_one_port_for_both_servers_is_refused(tmp_path: Path) -> None:
    port = str(free_port())
    done = run_up(tmp_path, "--model-port", port, "--webapp-port", port)
    assert done.returncode == 1
    assert f"the model server and the webapp cannot share port {port}" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failed_model_is_refused_with_the_ways_on_and_served_only_when_asked(project: Path) -> None:
    judge(project / "models", passed=False)
    ports = ["--model-port", str(free_port()), "--webapp-port", str(free_port())]
    done = run_up(project, "--no-train", *ports)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the model was trained but failed its test suite, so it is not served" in said
    assert "accuracy: 0.5000, needs >= 0.92: too many wrong" in said
    assert "dvc exp run -S train.seed=1" in said and "edge up --no-train --allow-failed-model" in said
    assert "Started" not in done.stderr and "Traceback" not in done.stderr

    running = launch(project, "--allow-failed-model")
    try:
        running.wait_for("Press Ctrl-C to stop")
        output = " ".join(running.output.split())
        assert "which failed its test suite, because of --allow-failed-model" in output
        model_api = re.search(r"model API (http://127\.0\.0\.1:\d+)/predict", output)
        assert model_api, output
        with urllib.request.urlopen(f"{model_api.group(1)}/health", timeout=5) as response:
            health = json.loads(response.read())
        assert health["model"]["verdict"] == "failed" and "--allow-failed-model" in health["warning"]
    finally:
        clean_up(running)


def test_the_way_back_to_the_committed_model_is_offered_only_where_it_works(project: Path) -> None:
    """A failed model in a git + DVC repository whose commit holds another model: `dvc checkout`
    where DVC's cache has the committed model, a word on why not where nothing has it (a fresh
    clone with no remote, where `dvc checkout` fails and removes models/), `dvc pull` with a remote."""

    def run(*argv: str) -> None:
        subprocess.run([sys.executable, "-m", *argv] if argv[0] == "dvc" else argv, cwd=project, check=True)

    def ways_on() -> str:
        ports = ["--model-port", str(free_port()), "--webapp-port", str(free_port())]
        done = run_up(project, "--no-train", *ports)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        return " ".join(done.stderr.split())

    models = project / "models"
    metadata = json.loads((models / "metadata.json").read_text())
    (models / "metadata.json").write_text(json.dumps({**metadata, "version": "0.0.0-committed"}))
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    run("dvc", "add", "-q", "models")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "a model that passed")
    (models / "metadata.json").write_text(json.dumps(metadata))  # trained again: another model
    judge(models, passed=False)
    back = "git checkout HEAD -- dvc.lock reports && dvc"

    said = ways_on()
    assert f"the committed model 0.0.0-committed: `{back} checkout models` (from DVC's cache)" in said

    shutil.rmtree(project / ".dvc" / "cache")
    said = ways_on()
    assert "the committed model is not at hand: neither this clone's DVC cache nor a DVC remote" in said
    assert "dvc checkout" not in said and "dvc exp run -S train.seed=1" in said
    assert json.loads((models / "metadata.json").read_text()) == metadata

    run("dvc", "remote", "add", "-d", "shared", str(project.parent / "store"))
    said = ways_on()
    assert f"go back to the committed model: `{back} pull models` (from the DVC remote shared)" in said


def test_a_failed_quick_model_gets_the_quick_models_ways_on(project: Path) -> None:
    """The quick demo model lives outside DVC: its ways on name its own params file and folder."""
    (project / "quick").mkdir()
    (project / "models").rename(project / "quick" / "models")
    judge(project / "quick" / "models", passed=False)
    ports = ["--model-port", str(free_port()), "--webapp-port", str(free_port())]
    done = run_up(project, "--quick", "--no-train", *ports)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "change train.seed in params-quick.yaml, then `edge up --quick` again" in said
    assert "`edge up --quick --no-train --allow-failed-model`" in said
    assert "quick/reports/evaluate/model-card.md" in said
    assert "dvc" not in said and "Traceback" not in said


def test_quick_trains_its_own_model_with_its_own_floors_and_serves_it(tmp_path: Path) -> None:
    """`edge up --quick`: params-quick.yaml, trained into quick/, never the default model's folder."""
    write_fashion_files(tmp_path / "data" / "raw" / "fashion-mnist", compress=False)
    quick = {
        "prepare": {"validation_size": 100},
        "train": {
            "epochs": 1,
            "batch_size": 64,
            **NO_AUGMENTATION,
            "model": {"filters": [8], "dense_units": 16},
        },
        "evaluate": {"min_accuracy": 0.0},
    }
    (tmp_path / "params-quick.yaml").write_text(yaml.safe_dump(quick))
    argv = [sys.executable, "-m", "edge", "up", "--quick"]
    argv += ["--model-port", str(free_port()), "--webapp-port", str(free_port())]
    process = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = Up(process)
    assert process.stdout is not None
    threading.Thread(target=_read, args=(process.stdout, running.lines), daemon=True).start()
    try:
        running.wait_for("Press Ctrl-C to stop", timeout=240)
        assert "Training the quick demo model (params-quick.yaml) into quick/" in running.output
        assert (tmp_path / "quick" / "models" / "verdict.json").is_file()
        assert not (tmp_path / "models").exists(), "the quick model replaced the default one"
        model_api = re.search(
            r"model API (http://127\.0\.0\.1:\d+)/predict", " ".join(running.output.split())
        )
        assert model_api, running.output
        with urllib.request.urlopen(f"{model_api.group(1)}/health", timeout=5) as response:
            served = json.loads(response.read())["model"]
        quick_model = json.loads((tmp_path / "quick" / "models" / "metadata.json").read_text())
        assert served == {"name": quick_model["name"], "version": quick_model["version"], "verdict": "passed"}
    finally:
        clean_up(running)
