"""The classifier's contract: raw pixels in, one probability per class out."""

from __future__ import annotations

import numpy as np
import pytest

from edge.data import CLASS_NAMES
from edge.model import (
    ModelParams,
    build_model,
    logits_model,
    machine,
    resolve_precision,
    with_flip_tta,
    with_temperature,
)
from edge.train import TrainParams, add_noise, shift_batch, vary_contrast


def test_model_outputs_probabilities_per_class() -> None:
    model = build_model(ModelParams(filters=(8, 16), dense_units=16))
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28)).astype(np.float32)
    probabilities = np.asarray(model(images, training=False))
    assert probabilities.shape == (5, len(CLASS_NAMES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities >= 0).all()


def test_each_block_has_its_own_count_of_convolutions_and_odd_maps_keep_their_edges() -> None:
    model = build_model(ModelParams(filters=(4, 8, 8), convs_per_block=(1, 2, 1), dense_units=8))
    convs = [layer.name for layer in model.layers if layer.name.startswith("block") and "conv" in layer.name]
    assert convs == ["block0_conv0", "block1_conv0", "block1_conv1", "block2_conv0"]
    # 28 -> 14 -> 7 -> 4: the last pooling keeps the seventh row and column of the 7x7 maps.
    assert model.get_layer("block2_pool").output.shape[1:3] == (4, 4)
    assert ModelParams(filters=(4, 8), convs_per_block=2).block_convs() == (2, 2)


EPYC_FLAGS = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 fma\n"
OLD_XEON_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw fma\n"
SAPPHIRE_FLAGS = "flags\t\t: avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n"


def test_auto_precision_follows_the_cpu_and_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    # avx512_bf16 alone computes bfloat16 natively, but the default's models pass in float32 there.
    epyc = resolve_precision("auto", cpuinfo=EPYC_FLAGS, gpus=0)
    assert epyc.policy == "float32" and "reports avx512_bf16 but not amx_bf16" in epyc.reason
    # The reason is in the model's metadata, and so in its md5: the committed model's must not change.
    sapphire = resolve_precision("auto", cpuinfo=SAPPHIRE_FLAGS, gpus=0)
    assert (sapphire.policy, sapphire.reason) == (
        "mixed_bfloat16",
        "auto: the CPU reports amx_bf16, avx512_bf16",
    )
    # AVX-512 without bf16 emulates it at twice float32's cost; macOS has no /proc/cpuinfo at all.
    assert resolve_precision("auto", cpuinfo=OLD_XEON_FLAGS, gpus=0).policy == "float32"
    assert resolve_precision("auto", cpuinfo="", gpus=0).policy == "float32"
    assert resolve_precision("auto", cpuinfo=OLD_XEON_FLAGS, gpus=1).policy == "mixed_float16"
    # An explicit setting wins over the hardware.
    assert resolve_precision(True, cpuinfo=OLD_XEON_FLAGS, gpus=0).policy == "mixed_bfloat16"
    assert resolve_precision(False, cpuinfo=EPYC_FLAGS, gpus=1).policy == "float32"


@pytest.mark.parametrize(
    ("limit", "cpuinfo", "policy"),
    [
        # Limited to AVX2 or plain AVX-512, neither CPU's bfloat16 units are in oneDNN's reach.
        ("AVX2", EPYC_FLAGS, "float32"),
        ("AVX2", SAPPHIRE_FLAGS, "float32"),
        ("avx512_core", EPYC_FLAGS, "float32"),
        # AMX is in reach only of the AMX sets (and of no limit).
        ("AVX512_CORE_BF16", SAPPHIRE_FLAGS, "float32"),
        ("AVX512_CORE_AMX", SAPPHIRE_FLAGS, "mixed_bfloat16"),
        ("ALL", SAPPHIRE_FLAGS, "mixed_bfloat16"),
    ],
)
def test_auto_precision_uses_only_the_bfloat16_units_onednn_may_use(
    monkeypatch: pytest.MonkeyPatch, limit: str, cpuinfo: str, policy: str
) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    precision = resolve_precision("auto", cpuinfo=cpuinfo, gpus=0)
    assert precision.policy == policy
    if policy == "float32":
        assert f"ONEDNN_MAX_CPU_ISA={limit}" in precision.reason


def test_the_machine_names_the_cpu_kind_and_any_limit_on_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert machine(f"model name\t: AMD EPYC 9B14\n{EPYC_FLAGS}")["cpu"] == "AMD EPYC 9B14"
    assert machine(EPYC_FLAGS)["cpu"] == "unknown"
    assert machine(EPYC_FLAGS)["flags"] == ["avx2", "avx512_bf16", "avx512f"]
    assert machine(EPYC_FLAGS)["onednn_max_cpu_isa"] == "all"
    # Limited to AVX2, this CPU computes (and rounds) as a CPU without AVX-512 would.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert machine(EPYC_FLAGS)["onednn_max_cpu_isa"] == "AVX2"


@pytest.mark.parametrize(("setting", "compute"), [(True, "bfloat16"), (False, "float32")])
def test_bfloat16_setting_changes_the_compute_dtype_not_the_output(setting: bool, compute: str) -> None:
    model = build_model(ModelParams(filters=(8,), dense_units=16, bfloat16=setting))
    conv = model.get_layer("block0_conv0")
    assert conv.compute_dtype == compute
    assert conv.kernel.dtype == "float32"  # weights stay float32 (mixed precision)
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28)).astype(np.float32)
    assert conv(np.zeros((1, 28, 28, 1), np.float32)).dtype == compute
    probabilities = model(images, training=False)
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.asarray(probabilities).sum(axis=1), 1.0, rtol=1e-5)


def test_temperature_rescales_the_logits() -> None:
    base = build_model(ModelParams(filters=(8,), dense_units=16, bfloat16=False))
    images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28)).astype(np.float32)
    logits = np.asarray(logits_model(base)(images, training=False), np.float64)
    calibrated = np.asarray(with_temperature(base, 0.5)(images, training=False))
    expected = np.exp(logits / 0.5) / np.exp(logits / 0.5).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(calibrated, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(calibrated.argmax(1), logits.argmax(1))


def test_flip_tta_averages_an_image_and_its_mirror() -> None:
    base = build_model(ModelParams(filters=(8,), dense_units=16))
    model = with_flip_tta(base)
    images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28)).astype(np.float32)
    mirrored = images[:, :, ::-1].copy()
    expected = (np.asarray(base(images, training=False)) + np.asarray(base(mirrored, training=False))) / 2
    np.testing.assert_allclose(np.asarray(model(images, training=False)), expected, rtol=1e-5, atol=1e-7)
    # A garment and its mirror image get the same answer.
    np.testing.assert_allclose(np.asarray(model(mirrored, training=False)), expected, rtol=1e-5, atol=1e-7)


def test_shift_moves_each_image_by_its_own_offset_within_the_limit() -> None:
    # One lit pixel in the middle of each image: where it lands is the image's offset.
    images = np.zeros((200, 28, 28), np.float32)
    images[:, 14, 14] = 255.0
    moved = np.asarray(shift_batch(images, 2, seed=(3, 0)))
    assert moved.shape == images.shape
    assert np.all(moved.sum(axis=(1, 2)) == 255.0)  # nothing lost, nothing added
    rows, columns = np.nonzero(moved.max(axis=2))[1], np.nonzero(moved.max(axis=1))[1]
    offsets = set(zip((rows - 14).tolist(), (columns - 14).tolist(), strict=True))
    assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in offsets)
    # Images of one batch move differently: all 25 offsets show up among 200 images.
    assert len(offsets) == 25


def test_shift_fills_with_black() -> None:
    images = np.full((50, 28, 28), 200.0, np.float32)
    moved = np.asarray(shift_batch(images, 1, seed=(0, 0)))
    # An image moved by (dy, dx) has |dy| black rows and |dx| black columns; some move, some don't.
    black = (moved == 0).sum(axis=(1, 2))
    assert set(black.tolist()) <= {0, 28, 55}
    assert black.max() == 55 and black.min() == 0


def test_contrast_and_brightness_vary_per_image_within_the_limit() -> None:
    # Two levels per image, 40 and 160 (mean 100): contrast moves them apart or together around the
    # mean, brightness scales both; the ratio of their distance to their mean undoes brightness.
    images = np.full((300, 28, 28), 40.0, np.float32)
    images[:, :, 14:] = 160.0
    varied = np.asarray(vary_contrast(images, 0.3, seed=(5, 0)))
    assert varied.shape == images.shape
    assert varied.min() >= 0 and varied.max() <= 255
    low, high = varied[:, 0, 0], varied[:, 0, 27]
    assert np.all(varied[:, :, :14] == low[:, None, None]) and np.all(
        varied[:, :, 14:] == high[:, None, None]
    )
    brightness = (low + high) / 2 / 100.0
    contrast = (high - low) / 2 / 60.0 / brightness
    for factor in (brightness, contrast):
        assert factor.min() >= 0.7 - 1e-4 and factor.max() <= 1.3 + 1e-4
        # Each image draws its own: spread over the range, not one value for the batch.
        assert factor.max() - factor.min() > 0.5


def test_noise_has_a_standard_deviation_of_its_own_per_image_up_to_the_limit() -> None:
    images = np.full((400, 28, 28), 128.0, np.float32)
    noisy = np.asarray(add_noise(images, 12.0, seed=(2, 0)))
    assert noisy.shape == images.shape and noisy.min() >= 0 and noisy.max() <= 255
    spread = noisy.reshape(400, -1).std(axis=1)
    # Drawn from [0, 12]: some images almost clean, some near 12, none far above it.
    assert spread.min() < 1.0 and 10.5 < spread.max() < 13.0
    assert abs(float(noisy.mean()) - 128.0) < 0.5


def test_a_standardizing_model_sees_one_image_at_any_brightness_or_contrast() -> None:
    model = build_model(ModelParams(filters=(8, 16), dense_units=16, standardize=True, bfloat16=False))
    images = np.random.default_rng(1).integers(0, 200, size=(8, 28, 28)).astype(np.float32)
    mean = images.mean(axis=(1, 2), keepdims=True)
    darker, low_contrast = images * 0.7, mean + (images - mean) * 0.7
    reference = np.asarray(model(images, training=False))
    for changed in (darker, low_contrast):
        np.testing.assert_allclose(np.asarray(model(changed, training=False)), reference, atol=1e-4)
    plain = build_model(ModelParams(filters=(8, 16), dense_units=16))
    assert not np.allclose(
        np.asarray(plain(darker, training=False)), np.asarray(plain(images, training=False))
    )


def test_training_says_its_precision_then_one_estimate_then_each_epoch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edge.data import Split
    from edge.train import train
    from tests.datagen import NO_AUGMENTATION, synthetic_split

    params = TrainParams.model_validate(
        {"epochs": 3, "batch_size": 16, **NO_AUGMENTATION, "model": {"filters": [4], "dense_units": 8}}
    )
    train(Split(*synthetic_split(400, 1)), Split(*synthetic_split(50, 2)), params)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("Training 3 epochs of 25 steps in ") and "an estimate follows" in lines[0]
    assert sum(line.startswith("Estimated training time: ") for line in lines) == 1
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "to go" in epochs[0] and "to go" not in epochs[-1]
