"""The webapp's settings, read from its environment once when the app is created.

Each field is the upper-case variable of its name (`model_url` is `MODEL_URL`), as Flask's config
spells it; a wrong value stops the app with one line naming the variable and what is allowed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

# A phone photo is a few MB; 10 MB leaves room without inviting abuse.
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# 12 megapixels is a phone photo; the model sees 28x28, so more buys nothing but memory. A bigger
# picture is refused from its header, before it is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 12_000_000


class WebappSettings(BaseSettings):
    """Where the model is and how the webapp talks to it."""

    # No prefix: the variables are the names Flask's config and the deployments already use.
    model_config = SettingsConfigDict(env_prefix="", env_ignore_empty=True, frozen=True)

    model_url: str = "http://127.0.0.1:8080"
    # The model server's AIP_PREDICT_ROUTE, when it is not the default.
    model_predict_route: str = Field(default="/predict", pattern=r"^/")
    model_connect_timeout: float = Field(default=2.0, gt=0)
    model_read_timeout: float = Field(default=10.0, gt=0)
    model_retries: int = Field(default=2, ge=0)
    max_content_length: int = Field(default=DEFAULT_MAX_UPLOAD_BYTES, ge=1)
    max_image_pixels: int = Field(default=DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    # `server` (the model server at MODEL_URL) or `vertex` (a Vertex AI endpoint: edge_webapp.vertex).
    model_backend: Literal["server", "vertex"] = "server"
    vertex_endpoint: str = ""
    vertex_api_endpoint: str = ""
    vertex_credentials: Literal["default", "anonymous"] = "default"
    # The /monitoring page's summary: a URL or a summary.json file [default: MODEL_URL/monitoring].
    monitoring_summary: str = ""


def default_config() -> dict[str, Any]:
    """Read the settings from the environment, as Flask config keys; ValueError names a wrong one."""
    try:
        settings = WebappSettings()
    except ValidationError as exc:
        raise ValueError(
            "\n".join(
                f"{str(error['loc'][0]).upper()}={error['input']!r} is not valid: "
                + str(error["msg"]).replace("Input should be", "must be")
                for error in exc.errors()
            )
        ) from None
    return {name.upper(): value for name, value in settings.model_dump().items()}
