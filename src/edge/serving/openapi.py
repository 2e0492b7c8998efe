"""The server's OpenAPI document, built for the routes and limits this process actually uses."""

from __future__ import annotations

from typing import Any

import edge

_PIXEL = {"type": "number", "minimum": 0, "maximum": 255}

_SCHEMAS: dict[str, Any] = {
    "Instance": {
        "description": "One 28x28 grayscale image, 0 = background, 255 = brightest.",
        "oneOf": [
            {
                "title": "Pixels28x28",
                "type": "array",
                "minItems": 28,
                "maxItems": 28,
                "items": {"type": "array", "minItems": 28, "maxItems": 28, "items": _PIXEL},
            },
            {"title": "Pixels784", "type": "array", "minItems": 784, "maxItems": 784, "items": _PIXEL},
            {
                "title": "EncodedImage",
                "type": "object",
                "required": ["b64"],
                "additionalProperties": False,
                "properties": {
                    "b64": {
                        "type": "string",
                        "format": "byte",
                        "description": "Base64 of a 28x28 PNG or JPEG.",
                    }
                },
            },
        ],
    },
    "Prediction": {
        "type": "object",
        "required": ["label", "class_id", "confidence", "probabilities"],
        "properties": {
            "label": {"type": "string", "example": "Sneaker"},
            "class_id": {"type": "integer", "minimum": 0},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "Model": {
        "type": "object",
        "description": "Which model answered, and its test suite's verdict: `passed`, or `failed` / "
        "`unjudged` when the server was started with --allow-failed-model.",
        "required": ["name", "version", "verdict"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "verdict": {"type": "string", "enum": ["passed", "failed", "unjudged"]},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "description": "The model's metadata.json as written at training time: name, version, "
        "class names and lineage (data version, parameters, machine): what its inputs decide.",
        "required": ["name", "version", "class_names"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "class_names": {"type": "array", "items": {"type": "string"}},
        },
    },
    "PredictResponse": {
        "type": "object",
        "required": ["predictions", "model"],
        "properties": {
            "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
            "model": {"$ref": "#/components/schemas/Model"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "What is wrong, in one sentence."},
            "instance": {"type": "integer", "description": "Index of the offending instance."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "loading", "failed"]},
            "model": {"$ref": "#/components/schemas/Model"},
            "warning": {
                "type": "string",
                "description": "Present when the model served did not pass its test suite.",
            },
            "error": {"type": "string"},
        },
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _predict_operation(
    max_instances: int, max_bytes: int, named: bool, model_name: str | None
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": "Classify images" + (" with the named model" if named else ""),
        "operationId": "predictNamed" if named else "predict",
        "requestBody": {
            "required": True,
            "description": f"At most {max_instances} instances and {max_bytes} bytes.",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["instances"],
                        "additionalProperties": False,
                        "properties": {
                            "instances": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": max_instances,
                                "items": {"$ref": "#/components/schemas/Instance"},
                            },
                            "parameters": {
                                "type": "object",
                                "description": "Accepted for Vertex AI; none are used yet.",
                            },
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "One prediction per instance, in order.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}},
            },
            "400": _error("Malformed body or an invalid instance (named by index)."),
            "408": _error("The body did not arrive within the body timeout."),
            "413": _error("Body larger than the limit, or too many instances."),
            "503": {
                **_error("The model is still loading, or the server is busy: retry after Retry-After."),
                "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}},
            },
        },
    }
    if named:
        name_schema: dict[str, Any] = {"type": "string"}
        if model_name is not None:
            name_schema["example"] = model_name
        operation["parameters"] = [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": name_schema,
                "description": "The model's name from its metadata.",
            }
        ]
        operation["responses"]["404"] = _error("No model of that name is served here.")
    return operation


def _metadata_operation(model_name: str | None) -> dict[str, Any]:
    name_schema: dict[str, Any] = {"type": "string"}
    if model_name is not None:
        name_schema["example"] = model_name
    return {
        "get": {
            "summary": "The served model's metadata and lineage",
            "operationId": "modelMetadata",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": name_schema}],
            "responses": {
                "200": {
                    "description": "metadata.json of the model that serves now.",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ModelMetadata"}}
                    },
                },
                "404": _error("No model of that name is served here."),
                "503": _error("The model is still loading."),
            },
        }
    }


def _model_card_operation(markdown: bool) -> dict[str, Any]:
    content_type = "text/markdown" if markdown else "text/html"
    return {
        "get": {
            "summary": f"The served model's card ({'Markdown' if markdown else 'self-contained HTML'})",
            "operationId": "modelCardMarkdown" if markdown else "modelCard",
            "responses": {
                "200": {
                    "description": "Lineage, metrics, per class, calibration, robustness, limits.",
                    "content": {content_type: {"schema": {"type": "string"}}},
                },
                "404": _error("The model was saved without a card."),
                "503": _error("The model is still loading."),
            },
        }
    }


def build_document(
    *,
    health_route: str,
    predict_route: str,
    named_route: str,
    metadata_route: str | None = None,
    max_instances: int,
    max_bytes: int,
    model_name: str | None,
) -> dict[str, Any]:
    """Return the OpenAPI 3.0 document of the server's routes."""
    health = {
        "get": {
            "summary": "Tell whether the model is loaded",
            "operationId": "health",
            "responses": {
                "200": {
                    "description": "Loaded and serving.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                },
                "503": {
                    "description": "Still loading, or loading failed.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                },
            },
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Edge model server",
            "version": edge.__version__,
            "description": "Fashion-MNIST classifier behind Vertex AI's custom-container contract.",
        },
        "paths": {
            health_route: health,
            predict_route: {"post": _predict_operation(max_instances, max_bytes, False, None)},
            named_route: {"post": _predict_operation(max_instances, max_bytes, True, model_name)},
            **({metadata_route: _metadata_operation(model_name)} if metadata_route else {}),
            # The card shows the lineage too: published exactly when the metadata is.
            **(
                {"/model-card": _model_card_operation(False), "/model-card.md": _model_card_operation(True)}
                if metadata_route
                else {}
            ),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.0 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": _SCHEMAS},
    }
