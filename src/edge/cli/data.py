"""`edge data`: bring the Fashion-MNIST files into the repository and under DVC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TransferSpeedColumn

from edge import data, storage
from edge.cli.common import console, friendly_errors

app = typer.Typer(help="Version the data: seed Fashion-MNIST and track it with DVC.", no_args_is_help=True)


def seed_data(raw_dir: Path | str, source: str | None, track: bool = True, download: bool = False) -> None:
    """Seed the raw files with a progress bar, then track them with DVC when in a DVC repository.

    `raw_dir` may be a `gs://` URI (containers, Vertex AI): it is never taken for a local path, and
    such data is not tracked by DVC.
    """
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(name: str, done: int, total: int | None) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"downloading {name}", total=total)
            bar.update(tasks[name], completed=done)

        result = data.seed(raw_dir, source=source, progress=progress, download=download)
    if not result.written:
        console.print(f"Fashion-MNIST is already in {raw_dir}, checksums match: nothing to do.")
    else:
        console.print(
            f"Seeded {len(result.written)} file(s) into {raw_dir} from {result.source}, checksums verified."
        )
    if track and not storage.is_remote(str(raw_dir)):
        local = Path(raw_dir)
        if result.written or not _dvc_file(local).is_file():
            _track(local)


def _dvc_file(raw_dir: Path) -> Path:
    return raw_dir.with_name(raw_dir.name + ".dvc")


def _track(raw_dir: Path) -> None:
    """Run `dvc add` so the files' hashes become the data version; skip outside a DVC repository."""
    if not Path(".dvc").is_dir():
        console.print("Not in a DVC repository: the data is not tracked (fine in a container).")
        return
    dvc_file = _dvc_file(raw_dir)
    before = dvc_file.read_text() if dvc_file.is_file() else None
    # The interpreter running us has DVC installed, whether or not `dvc` is on the PATH.
    done = subprocess.run([sys.executable, "-m", "dvc", "add", str(raw_dir)], capture_output=True, text=True)
    if done.returncode != 0:
        raise data.DataError(f"dvc add {raw_dir} failed: {done.stderr.strip() or done.stdout.strip()}")
    if dvc_file.is_file() and dvc_file.read_text() == before:
        # The same content as committed (a fresh clone's files seeded again): nothing to commit.
        console.print(f"Tracked by DVC in {dvc_file}, unchanged: the data version is the committed one.")
    else:
        console.print(f"Tracked by DVC in {dvc_file} (commit it with git).")


@app.command()
def seed(
    source: Annotated[
        str | None,
        typer.Option(
            envvar="EDGE_DATA_SOURCE",
            help="Copy from this local folder instead of downloading (files named as upstream, .gz or not).",
        ),
    ] = None,
    raw_dir: Annotated[str, typer.Option(help="Where the raw files go (local path or gs:// URI).")] = str(
        data.DEFAULT_RAW_DIR
    ),
    track: Annotated[bool, typer.Option(help="Track the files with DVC afterwards.")] = True,
    download: Annotated[
        bool,
        typer.Option("--download", help="Download from the mirrors even when Debian's copy is installed."),
    ] = False,
) -> None:
    """Download (or copy) the four Fashion-MNIST files, verify their checksums and track them with DVC."""
    with friendly_errors():
        seed_data(raw_dir, source, track, download)


@app.command()
def curate(
    raw_dir: Annotated[Path, typer.Option(help="The raw Fashion-MNIST files.")] = data.DEFAULT_RAW_DIR,
    output: Annotated[Path, typer.Option(help="The curated file to write (commit it with git).")] = Path(
        "data/curated/clear-examples.json"
    ),
    per_class: Annotated[int, typer.Option(min=1, help="Examples per class.")] = 10,
    neighbours: Annotated[
        int | None,
        typer.Option(min=1, help="Nearest training images that must all share the label [default: 25]."),
    ] = None,
) -> None:
    """Choose the test suite's clear examples: per class, test images all of whose neighbours agree."""
    from edge.model_tests import CLEAR_EXAMPLES_FORMAT, CLEAR_NEIGHBOURS, select_clear_examples

    neighbours = neighbours or CLEAR_NEIGHBOURS

    with friendly_errors():
        train = data.Split(*data.load_split(raw_dir, "train"))
        test = data.Split(*data.load_split(raw_dir, "t10k"))
        examples = select_clear_examples(train, test, per_class=per_class, neighbours=neighbours)
    document = {
        "format": CLEAR_EXAMPLES_FORMAT,
        "description": "Clear examples the model must all get right (the test suite's minimum functionality)",
        "selection": (
            f"per class, the first {per_class} images of the Fashion-MNIST test set (t10k, by id) whose "
            f"{neighbours} nearest training images (raw pixels, Euclidean) all share its label; "
            "`edge data curate`"
        ),
    }
    # One example a line: small diffs when the selection changes.
    text = json.dumps(document, indent=1).removesuffix("\n}") + ","
    lines = ",\n  ".join(json.dumps(e) for e in examples)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f'{text}\n "examples": [\n  {lines}\n ]\n}}\n')
    console.print(f"Wrote {len(examples)} clear examples to {output}.")
