"""The webapp through Flask's test client, talking to a real model server on 127.0.0.1."""

from __future__ import annotations

import io
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image, ImageChops, ImageDraw
from werkzeug.serving import BaseWSGIServer, make_server

from edge_webapp import create_app
from edge_webapp.imaging import open_image, to_fashion_mnist
from edge_webapp.views import samples
from tests.live_servers import free_port


def _serve_in_thread(app: Flask) -> Iterator[str]:
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def model_url(tiny_model_dir: Path) -> Iterator[str]:
    """The real model server (tiny untrained model) on a free port of 127.0.0.1."""
    from edge.serving.app import create_app as create_server
    from edge.serving.loaded_model import load_from_uri
    from edge.serving.settings import ServerSettings
    from tests.serving_helpers import serving

    app = create_server(ServerSettings(reload_interval=0), predictor=load_from_uri(str(tiny_model_dir)))
    with serving(app) as client:
        yield client.url


@pytest.fixture(scope="module")
def broken_model_url() -> Iterator[str]:
    """A model server that answers every prediction with an HTTP 500."""
    broken = Flask("broken")
    broken.add_url_rule("/predict", "predict", lambda: ("boom", 500), methods=["POST"])
    yield from _serve_in_thread(broken)


@pytest.fixture
def client(model_url: str) -> FlaskClient:
    return create_app({"MODEL_URL": model_url, "MAX_CONTENT_LENGTH": 2_000_000}).test_client()


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def product_photo(size: tuple[int, int] = (600, 400)) -> Image.Image:
    """A dark garment-ish shape off-centre on a white background, like a shop photo."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle((50, 80, 200, 380), fill=(40, 40, 90))
    return image


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


# --- Conversion ------------------------------------------------------------------------------------


def test_conversion_is_28x28_grayscale_dark_background_and_centred() -> None:
    converted = to_fashion_mnist(product_photo())
    assert converted.size == (28, 28) and converted.mode == "L"
    assert converted.getpixel((0, 0)) == 0  # the white background became black
    box = converted.point(lambda p: 255 if p > 30 else 0).getbbox()
    assert box is not None
    left, top, right, bottom = box
    assert bottom - top == 28  # the longest side fills the canvas
    assert abs(left - (28 - right)) <= 1  # centred


def test_a_fashion_mnist_image_goes_through_unchanged() -> None:
    sample = samples()[0]
    from importlib import resources

    data = resources.files("edge_webapp").joinpath(f"static/samples/{sample.file}").read_bytes()
    original = Image.open(io.BytesIO(data))
    assert to_fashion_mnist(original).tobytes() == original.convert("L").tobytes()


# --- Pages and API that work -------------------------------------------------------------------------


def test_index_shows_the_form_and_samples(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    assert 'type="file"' in page
    assert all(f'value="{s.id}"' in page for s in samples())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_upload_shows_label_confidence_bars_and_model(client: FlaskClient, fmt: str) -> None:
    data = encoded(product_photo((1200, 900)), fmt)
    response = client.post("/", data={"image": (io.BytesIO(data), f"photo.{fmt.lower()}")})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'id="label"' in page and 'id="confidence"' in page
    assert page.count('class="bar"') == 10
    assert "0.0.0-test" in page and "lineage" not in page


def test_sample_is_classified(client: FlaskClient) -> None:
    response = client.post("/", data={"sample": samples()[0].id})
    assert response.status_code == 200
    assert 'id="label"' in response.get_data(as_text=True)


def test_api_returns_the_same_as_json(client: FlaskClient) -> None:
    data = encoded(product_photo(), "PNG")
    response = client.post("/api/predict", data={"image": (io.BytesIO(data), "photo.png")})
    assert response.status_code == 200
    body = response.json
    assert set(body["prediction"]) == {"label", "class_id", "confidence", "probabilities"}
    assert body["model"]["version"] == "0.0.0-test"
    assert body["image"].startswith("data:image/png;base64,")
    raw = client.post("/api/predict", data=data, content_type="image/png")
    assert raw.status_code == 200
    assert raw.json["prediction"] == body["prediction"]


def test_a_16_bit_picture_converts_like_its_8_bit_version() -> None:
    # A light background (60,000 of 65,535) and a dark garment: converting to 8 bits by clipping
    # would turn all of it white; scaled, it must give the 8-bit picture's result.
    photo = product_photo().convert("L")
    wide = photo.convert("I").point(lambda p: p * 257)
    sixteen_bit = Image.open(io.BytesIO(encoded(wide.convert("I;16"), "PNG")))
    assert sixteen_bit.mode.startswith("I;16")
    data = encoded(sixteen_bit, "PNG")
    converted = to_fashion_mnist(open_image(data, 12_000_000))
    expected = to_fashion_mnist(photo)
    difference = ImageChops.difference(converted, expected)
    assert max(difference.getextrema()) <= 2  # type: ignore[arg-type]


def test_a_big_jpeg_is_decoded_at_a_fraction_of_its_size() -> None:
    photo = Image.new("RGB", (4000, 3000), "white")
    ImageDraw.Draw(photo).ellipse((1200, 400, 2600, 2700), fill=(40, 40, 90))
    data = encoded(photo, "JPEG")
    image = open_image(data, 12_000_000)
    # Decoded at 1/4 scale straight from the JPEG, never at 12 MP.
    assert max(image.size) <= 1000
    full = to_fashion_mnist(Image.open(io.BytesIO(data)))
    difference = ImageChops.difference(to_fashion_mnist(image), full)
    # The same picture for the model: only a few edge pixels differ, and by little.
    assert sum(difference.histogram()[32:]) <= 10, difference.histogram()


def test_pictures_above_12_megapixels_are_refused_from_their_header(client: FlaskClient) -> None:
    assert create_app().config["MAX_IMAGE_PIXELS"] == 12_000_000
    refused = client.post("/api/predict", data={"image": (io.BytesIO(png_bomb(4000, 3001)), "b.png")})
    assert refused.status_code == 413
    assert "12,000,000" in refused.json["error"]


# --- Every failure: a friendly message on the page, the right status in the API ---------------------


def _failures() -> list[tuple[str, bytes, int, str]]:
    return [
        ("text file", b"just some text\n", 400, "not a picture"),
        ("empty file", b"", 400, "empty"),
        ("gif", encoded(product_photo(), "GIF"), 400, "not a picture"),
        ("truncated png", encoded(product_photo(), "PNG")[:300], 400, "damaged"),
        ("decompression bomb", png_bomb(100_000, 100_000), 413, "too many pixels"),
        ("oversize upload", b"\0" * 2_100_000, 413, "too large"),
        ("flat colour", encoded(Image.new("RGB", (50, 50), "white"), "PNG"), 400, "flat colour"),
    ]


@pytest.mark.parametrize(
    ("data", "status", "words"), [f[1:] for f in _failures()], ids=[f[0] for f in _failures()]
)
def test_bad_uploads_get_a_friendly_page_and_api_error(
    client: FlaskClient, data: bytes, status: int, words: str
) -> None:
    page = client.post("/", data={"image": (io.BytesIO(data), "upload.bin")})
    assert page.status_code == status
    html = page.get_data(as_text=True)
    assert 'role="alert"' in html and words in html
    api = client.post("/api/predict", data={"image": (io.BytesIO(data), "upload.bin")})
    assert api.status_code == status
    assert words in api.json["error"]
    # And the app keeps working.
    assert client.post("/", data={"sample": samples()[0].id}).status_code == 200


def test_bomb_between_our_limit_and_pillows_is_refused(model_url: str) -> None:
    client = create_app({"MODEL_URL": model_url, "MAX_IMAGE_PIXELS": 1_000_000}).test_client()
    data = encoded(Image.new("L", (1500, 1000), 255), "PNG")  # 1.5 MP: Pillow would only warn
    response = client.post("/api/predict", data={"image": (io.BytesIO(data), "big.png")})
    assert response.status_code == 413


def test_missing_upload_is_400(client: FlaskClient) -> None:
    assert client.post("/api/predict").status_code == 400
    page = client.post("/", data={})
    assert page.status_code == 400 and "Choose a picture" in page.get_data(as_text=True)
    assert client.post("/", data={"sample": "nope"}).status_code == 404


def test_unreachable_model_server_is_503_and_friendly() -> None:
    app = create_app({"MODEL_URL": f"http://127.0.0.1:{free_port()}", "MODEL_RETRIES": 1})
    client = app.test_client()
    data = encoded(product_photo(), "PNG")
    api = client.post("/api/predict", data={"image": (io.BytesIO(data), "photo.png")})
    assert api.status_code == 503
    assert "cannot be reached" in api.json["error"]
    page = client.post("/", data={"image": (io.BytesIO(data), "photo.png")})
    assert page.status_code == 503 and "cannot be reached" in page.get_data(as_text=True)
    assert client.get("/health").status_code == 200


def test_failing_model_server_is_502_and_friendly(broken_model_url: str) -> None:
    client = create_app({"MODEL_URL": broken_model_url, "MODEL_RETRIES": 0}).test_client()
    response = client.post("/", data={"sample": samples()[0].id})
    assert response.status_code == 502
    assert "answered with an error" in response.get_data(as_text=True)


def test_slow_model_server_times_out_with_504() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = create_app({"MODEL_URL": url, "MODEL_READ_TIMEOUT": 0.3, "MODEL_RETRIES": 0}).test_client()
        response = client.post(
            "/api/predict", data={"image": (io.BytesIO(encoded(product_photo(), "PNG")), "photo.png")}
        )
    assert response.status_code == 504
    assert "too long" in response.json["error"]


# --- The model card ----------------------------------------------------------------------------------


def test_result_links_to_the_model_card_which_the_webapp_shows(tmp_path: Path) -> None:
    from edge.model import ModelParams, build_model, save_model
    from edge.serving.app import create_app as create_server
    from edge.serving.loaded_model import load_from_uri
    from edge.serving.settings import ServerSettings
    from tests.conftest import TINY_MODEL_METADATA
    from tests.serving_helpers import serving
    from tests.verdicts import judge

    with_card = tmp_path / "models"
    card = {"model-card.html": b"<!DOCTYPE html><h1>Model card: tiny</h1><table></table>"}
    model = build_model(ModelParams(filters=(8,), dense_units=16))
    save_model(model, str(with_card), dict(TINY_MODEL_METADATA), extra_files=card)
    judge(with_card)
    server = create_server(ServerSettings(reload_interval=0), predictor=load_from_uri(str(with_card)))
    with serving(server) as model:
        webapp = create_app({"MODEL_URL": model.url}).test_client()
        page = webapp.post("/", data={"sample": samples()[0].id})
        assert page.status_code == 200
        assert 'href="/model-card"' in page.get_data(as_text=True)
        card = webapp.get("/model-card")
        assert card.status_code == 200 and card.mimetype == "text/html"
        assert "<h1>Model card: tiny</h1>" in card.get_data(as_text=True)


def test_a_model_without_a_card_gets_a_friendly_page(tmp_path: Path) -> None:
    from edge.model import ModelParams, build_model, save_model
    from edge.serving.app import create_app as create_server
    from edge.serving.loaded_model import load_from_uri
    from edge.serving.settings import ServerSettings
    from tests.conftest import TINY_MODEL_METADATA
    from tests.serving_helpers import serving
    from tests.verdicts import judge

    without_card = tmp_path / "models"
    save_model(
        build_model(ModelParams(filters=(8,), dense_units=16)), str(without_card), dict(TINY_MODEL_METADATA)
    )
    judge(without_card)
    server = create_server(ServerSettings(reload_interval=0), predictor=load_from_uri(str(without_card)))
    with serving(server) as model:
        response = create_app({"MODEL_URL": model.url}).test_client().get("/model-card")
        assert response.status_code == 404
        assert "has no model card" in response.get_data(as_text=True)
