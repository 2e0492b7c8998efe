"""`edge image`: build the trainer and webapp images with their lineage, push them by digest."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

from edge.cli.common import console, fail, out, waiting

if TYPE_CHECKING:
    from edge.containers import BuiltImage, PushedImage

app = typer.Typer(help="Build the container images and push them to a registry.", no_args_is_help=True)

ServicesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Which images: trainer, trainer-gpu, webapp [default: trainer and webapp, and trainer-gpu "
        "when edge.yaml names an accelerator_type]",
        show_default=False,
    ),
]
TagOpt = Annotated[
    str | None,
    typer.Option(help="The tag; default: the commit, with -dirty-<hash> for uncommitted changes."),
]


@contextmanager
def image_errors() -> Iterator[None]:
    """Turn a failed build or push into one clear line."""
    from edge.cloud.errors import CloudError
    from edge.cloud.settings import SettingsError

    try:
        yield
    except (CloudError, SettingsError) as exc:
        fail(str(exc))


@app.command()
def build(
    services: ServicesArg = None,
    tag: TagOpt = None,
    python_image: Annotated[
        str | None, typer.Option(help="The base image (the Dockerfiles' PYTHON_IMAGE build argument).")
    ] = None,
) -> None:
    """Build the images from services/*/Dockerfile, tagged with the git commit."""
    build_images(services or [], tag, python_image)


def build_images(
    services: list[str], tag: str | None = None, python_image: str | None = None
) -> list[BuiltImage]:
    """Build the images (default: all) and print each one's tag, id and size."""
    from edge import containers as images

    built = []
    with image_errors():
        client = images.engine()
        root = images.repository_root()
        state = images.git_state(root)
        if state.dirty:
            console.print(
                f"[yellow]warning:[/] uncommitted changes: tagging the images {state.tag}; "
                "commit first for images others will run.",
                highlight=False,
            )
        # The webapp first: it takes seconds, the trainer (TensorFlow) minutes on a cold cache.
        for service in services or default_images():
            console.print(f"Building {images.image_ref(service, tag or state.tag)} from {root}")
            image = images.build(service, root=root, tag=tag, python_image=python_image, client=client)
            built.append(image)
            out.print(f"{image.ref}  {image.id}  {image.size / 1e6:,.0f} MB", highlight=False)
    return built


@app.command()
def push(
    services: ServicesArg = None,
    registry: Annotated[
        str | None,
        typer.Option(
            help="Where to: 127.0.0.1:5000/edge locally, REGION-docker.pkg.dev/PROJECT/REPO on Google "
            "Cloud [default: edge.yaml's Artifact Registry repository, or its endpoints.registry]",
            show_default=False,
        ),
    ] = None,
    tag: TagOpt = None,
) -> None:
    """Push the images built for this commit; print each one by digest, as later steps use it."""
    push_images(registry, services or [], tag)


def push_images(registry: str | None, services: list[str], tag: str | None = None) -> list[PushedImage]:
    """Push the images (default: all) and print each one as `<registry>/edge-<service>@<digest>`."""
    from edge import containers as images

    pushed = []
    with image_errors():
        registry = registry or _settings_registry()
        client = images.engine()
        tag = tag or images.git_state(images.repository_root()).tag
        for service in services or default_images():
            target = images.image_ref(service, tag, registry)
            with push_progress(f"Pushing {target}") as on_event:
                image = images.push(service, registry, tag=tag, client=client, on_event=on_event)
            pushed.append(image)
            # stdout carries only the references, one per line, for scripts.
            out.print(image.ref, highlight=False, soft_wrap=True)
    return pushed


def default_images() -> list[str]:
    """trainer and webapp, and trainer-gpu when edge.yaml asks for accelerators."""
    from edge import containers as images
    from edge.cloud import settings

    accelerator = None
    if settings.config_path().is_file():
        accelerator = settings.load().accelerator_type
    return images.default_images(accelerator)


def _settings_registry() -> str:
    from edge.cloud import settings
    from edge.containers import ImageError

    if not settings.config_path().is_file():
        raise ImageError(
            "no registry: pass --registry HOST[:PORT]/PATH, or run `edge config` for Google Cloud"
        )
    return settings.load().image_registry


def _finished(status: str) -> bool:
    return status in {"Pushed", "Layer already exists"} or status.startswith("Mounted")


@contextmanager
def push_progress(title: str) -> Iterator[Any]:
    """A progress bar over the bytes of every layer the engine reports uploading; without a terminal,
    a line per layer done and, while the engine works, a line every EDGE_PROGRESS_SECONDS."""
    if not console.is_terminal:
        with waiting(title) as update:
            done: set[str] = set()

            def on_line(event: dict[str, Any]) -> None:
                layer, status = event.get("id"), event.get("status", "")
                detail = event.get("progressDetail") or {}
                if not layer or ":" in layer:
                    return
                if _finished(status) and layer not in done:
                    done.add(layer)
                    console.print(f"  {layer} {status.lower()}", highlight=False)
                elif detail.get("total"):
                    sent, total = detail.get("current", 0) / 1e6, detail["total"] / 1e6
                    update(f"{title}: layer {layer} {sent:,.0f}/{total:,.0f} MB")

            yield on_line
        return
    layers: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console, transient=True
    ) as progress:
        console.print(title, highlight=False)

        def on_event(event: dict[str, Any]) -> None:
            layer, status = event.get("id"), event.get("status", "")
            detail = event.get("progressDetail") or {}
            if not layer or ":" in layer:
                return  # tag-level messages, not a layer
            if layer not in layers:
                layers[layer] = progress.add_task(f"  {layer}", total=None)
            task = layers[layer]
            if detail.get("total"):
                progress.update(task, completed=detail.get("current", 0), total=detail["total"])
            if _finished(status):
                progress.update(task, description=f"  {layer} {status.lower()}", completed=1, total=1)

        yield on_event
