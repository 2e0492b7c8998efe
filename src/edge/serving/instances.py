"""Turn a request's `instances` into the float32 batch the serving function takes, or say which is wrong.

Validation happens here, before TensorFlow sees anything, so bad input becomes a clear 400 naming
the instance instead of a TensorFlow error, a 500 or a dead worker.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge.data import IMAGE_SHAPE

PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
IMAGE_FORMATS = ("PNG", "JPEG")
# A 28x28 PNG or JPEG is well under 10 kB; this bounds the work spent on one b64 string.
MAX_B64_CHARS = 64 * 1024


class InstanceError(ValueError):
    """One instance of a request is invalid; `index` says which one."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(f"instances[{index}]: {problem}")
        self.index = index
        self.problem = problem


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    # bool is a subclass of int, but true/false are not pixels.
    return isinstance(value, int | float) and not isinstance(value, bool)


_NUMBER_TYPES = frozenset({int, float})


def _check_numbers(index: int, values: Sequence[Any], where: str) -> None:
    # The common case, all ints or floats, is checked in C; the loop below only names the culprit.
    if set(map(type, values)) <= _NUMBER_TYPES:
        return
    for position, value in enumerate(values):
        if not _is_number(value):
            raise InstanceError(index, f"{where}[{position}] is {_describe(value)}, expected a number 0-255")


def _decode_b64_image(index: int, payload: Any) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(payload, str):
        raise InstanceError(index, f"b64 is {_describe(payload)}, expected a base64 string")
    if len(payload) > MAX_B64_CHARS:
        raise InstanceError(index, f"b64 is {len(payload)} characters, more than the {MAX_B64_CHARS} allowed")
    # GNU base64 wraps its output every 76 characters: line breaks carry no data, so they are dropped.
    if "\n" in payload or "\r" in payload:
        payload = payload.replace("\r", "").replace("\n", "")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InstanceError(
            index,
            f"b64 is not valid base64 ({exc}); send standard base64 (A-Z, a-z, 0-9, +, / and = padding), "
            "for example the output of `base64 -w0 image.png`",
        ) from exc
    try:
        # Any pixel-count warning is an error: only a 28x28 image is acceptable anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.format not in IMAGE_FORMATS:
                raise InstanceError(index, f"image format {image.format} is not supported, send PNG or JPEG")
            # The size comes from the header, so an oversized image is refused before decoding.
            if image.size != (IMAGE_SHAPE[1], IMAGE_SHAPE[0]):
                raise InstanceError(
                    index,
                    f"image is {image.size[0]}x{image.size[1]} pixels, expected 28x28 "
                    "(convert it the way Fashion-MNIST was made first, as the webapp does)",
                )
            pixels = np.asarray(image.convert("L"), dtype=np.float32)
    except InstanceError:
        raise
    except UnidentifiedImageError as exc:
        raise InstanceError(index, "b64 does not hold a PNG or JPEG image") from exc
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InstanceError(index, f"b64 is not a decodable PNG or JPEG image ({exc})") from exc
    return pixels


def decode_instance(index: int, instance: Any) -> np.ndarray:
    """Turn one instance into a float32 (28, 28) array of 0-255 pixels, or raise InstanceError."""
    if isinstance(instance, dict):
        if set(instance) != {"b64"}:
            raise InstanceError(
                index, f"an object instance must have exactly one key, b64; got {sorted(instance)}"
            )
        return _decode_b64_image(index, instance["b64"])
    if not isinstance(instance, list):
        raise InstanceError(
            index,
            f"instance is {_describe(instance)}, expected a 28x28 array, "
            'a flat list of 784 numbers or {"b64": ...}',
        )
    if len(instance) == PIXELS and not isinstance(instance[0], list):
        _check_numbers(index, instance, "value")
        array = _to_array(index, instance).reshape(IMAGE_SHAPE)
    elif len(instance) == IMAGE_SHAPE[0]:
        for row_index, row in enumerate(instance):
            if not isinstance(row, list) or len(row) != IMAGE_SHAPE[1]:
                raise InstanceError(
                    index,
                    f"wrong shape: row {row_index} is {_describe(row)}, "
                    f"expected a list of {IMAGE_SHAPE[1]} numbers",
                )
            _check_numbers(index, row, f"row {row_index} value")
        array = _to_array(index, instance)
    else:
        raise InstanceError(
            index,
            f"wrong shape: {_describe(instance)}, expected a 28x28 array or a flat list of 784",
        )
    _check_range(index, array)
    return array.astype(np.float32)


def _to_array(index: int, values: list[Any]) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except OverflowError as exc:  # JSON integers have no size limit
        raise InstanceError(index, "a value is far out of range 0-255") from exc


def _check_range(index: int, array: np.ndarray) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        position = int(np.argmin(finite))
        value = array.flat[position]
        kind = "NaN" if math.isnan(value) else "infinite"
        raise InstanceError(index, f"pixel {position} is {kind}, expected a number 0-255")
    outside = (array < 0) | (array > 255)
    if outside.any():
        position = int(np.argmax(outside))
        raise InstanceError(index, f"pixel {position} is {array.flat[position]:g}, out of range 0-255")


def decode_instances(instances: Any, max_instances: int, *, json_text: bytes | None = None) -> np.ndarray:
    """Validate a request's `instances` and stack them into a float32 (N, 28, 28) batch.

    `json_text` is the body the instances were parsed from, if at hand: when it holds no `true` or
    `false`, valid numeric instances are converted in one numpy call instead of checked one by one.
    """
    if not isinstance(instances, list):
        raise ValueError(f"instances is {_describe(instances)}, expected a list")
    if not instances:
        raise ValueError("instances is empty, send at least one")
    if len(instances) > max_instances:
        raise TooManyInstancesError(len(instances), max_instances)
    if json_text is not None and b"true" not in json_text and b"false" not in json_text:
        batch = _numbers_at_once(instances)
        if batch is not None:
            return batch
    return np.stack([decode_instance(i, instance) for i, instance in enumerate(instances)])


def _numbers_at_once(instances: list[Any]) -> np.ndarray | None:
    """Convert instances that are all valid pixel arrays in one go; None if any is not.

    This is the common request, and the server's busiest code: one numpy conversion of the whole
    list costs a third of checking each value's type in Python. numpy turns booleans mixed with
    numbers into numbers, which is why the caller only comes here when the JSON holds none; strings,
    nulls, objects, ragged or wrongly shaped lists give a non-numeric dtype or another shape, and
    whatever is not accepted here goes through `decode_instance`, which says what is wrong.
    """
    try:
        array = np.array(instances)
    except (ValueError, OverflowError):  # ragged lists, or integers too large for any dtype
        return None
    if array.dtype.kind not in "iuf":
        return None
    count = len(instances)
    if array.shape == (count, PIXELS):
        array = array.reshape(count, *IMAGE_SHAPE)
    elif array.shape != (count, *IMAGE_SHAPE):
        return None
    # NaN fails both comparisons; the range is checked before float32 rounds anything into it.
    if not (array.min() >= 0 and array.max() <= 255):
        return None
    return array.astype(np.float32)


class TooManyInstancesError(ValueError):
    """More instances than the server accepts in one request."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} instances in one request, the limit is {limit}")
