"""A real Chromium, driven by Playwright, uses the webapp in front of a model the test trains itself.

EDGE_CHROMIUM names the browser [/usr/bin/chromium, Debian's]; CI sets it where it installs another.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.data import CLASS_NAMES as FASHION_CLASSES
from tests.conftest import REPO_ROOT
from tests.docker_env import IN_CI
from tests.live_servers import LiveServer, model_server, webapp
from tests.verdicts import judge

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("EDGE_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO_ROOT / "test-artifacts"
CLASS_NAMES = list(FASHION_CLASSES)


def _read_idx(folder: Path, stem: str) -> np.ndarray:
    from edge.data import read_idx

    gz = folder / f"{stem}.gz"
    return read_idx(gz if gz.is_file() else folder / stem)


@pytest.fixture(scope="module")
def trained_model_dir(real_fashion_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained for seconds on real images, judged passed so the server serves it.

    Its own, never the pipeline's `models/`: the test must not depend on what a checkout holds.
    """
    import keras

    from edge.model import ModelParams, build_model, save_model

    keras.utils.set_random_seed(0)
    images = _read_idx(real_fashion_source, "train-images-idx3-ubyte")[:6000].astype("float32")
    labels = _read_idx(real_fashion_source, "train-labels-idx1-ubyte")[:6000]
    model = build_model(ModelParams(filters=(16, 32), dense_units=64, dropout=0.1))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=3, batch_size=64, verbose=0)
    folder = tmp_path_factory.mktemp("trained") / "models"
    save_model(
        model,
        str(folder),
        {
            "name": "fashion-mnist",
            "version": "browser-test",
            "class_names": CLASS_NAMES,
            "lineage": {"data_version": "first 6000 training images", "run_id": "browser-fixture"},
        },
    )
    # The test checks the plumbing, and confident_test_image picks an image this model gets right.
    judge(folder)
    return folder


@pytest.fixture(scope="module")
def confident_test_image(
    trained_model_dir: Path, real_fashion_source: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A Fashion-MNIST test image as PNG, with its true label.

    The image is chosen so the test checks the plumbing, not the model's accuracy: the first test
    image that, after the webapp's conversion, the served model classifies correctly with
    confidence of at least 0.9.
    """
    from edge.serving.loaded_model import load_from_uri
    from edge_webapp.imaging import to_fashion_mnist

    predictor = load_from_uri(str(trained_model_dir))
    images = _read_idx(real_fashion_source, "t10k-images-idx3-ubyte")[:500]
    labels = _read_idx(real_fashion_source, "t10k-labels-idx1-ubyte")[:500]
    converted = np.stack([np.asarray(to_fashion_mnist(Image.fromarray(i))) for i in images])
    predictions = predictor.predict(converted.astype("float32"))
    for index, (prediction, label) in enumerate(zip(predictions, labels, strict=True)):
        if prediction.class_id == int(label) and prediction.confidence >= 0.9:
            path = tmp_path_factory.mktemp("upload") / f"fashion-mnist-test-{index}.png"
            Image.fromarray(images[index]).save(path)
            return path, CLASS_NAMES[int(label)]
    pytest.fail("the trained model is confident and right on none of 500 test images")


@pytest.fixture(scope="module")
def site(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    logs = tmp_path_factory.mktemp("logs")
    with (
        model_server(trained_model_dir, logs / "model.log") as model,
        webapp(model.url, logs / "webapp.log") as app,
    ):
        yield app


@pytest.fixture(scope="module")
def page(site: LiveServer) -> Iterator[object]:
    if not CHROMIUM.exists():
        message = f"no browser at {CHROMIUM}: apt-get install -y chromium, or set EDGE_CHROMIUM"
        # On a laptop a missing browser skips; in CI it must not hide the test.
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser.new_page(viewport={"width": 900, "height": 1100})
        finally:
            browser.close()


def test_upload_of_a_test_image_shows_the_right_label(
    page: object, site: LiveServer, confident_test_image: tuple[Path, str]
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    image, label = confident_test_image
    page.goto(site.url)
    page.set_input_files("#image", str(image))
    page.click("#classify")
    expect(page.locator("#label")).to_have_text(label)
    expect(page.locator("#confidence")).to_contain_text("%")
    expect(page.locator(".bars tr")).to_have_count(10)
    expect(page.locator("#model-version")).to_contain_text("fashion-mnist")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webapp-prediction.png"), full_page=True)


def test_upload_of_a_text_file_shows_a_friendly_error(page: object, site: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    text = tmp_path / "notes.txt"
    text.write_text("not a picture at all\n")
    page.goto(site.url)
    page.set_input_files("#image", str(text))
    page.click("#classify")
    expect(page.locator("#error")).to_contain_text("not a picture we can read")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webapp-error.png"), full_page=True)
    # The app is still up: a sample works right after.
    page.click("button[name=sample][value=sneaker]")
    expect(page.locator("#label")).to_be_visible()
