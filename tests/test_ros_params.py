"""The node's parameter rules (coupalign_ros/params.py) and config/coupalign.yaml, without rclpy."""

from __future__ import annotations

from pathlib import Path

import pytest

from coupalign_ros import params

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_defaults_equal_the_declared_defaults():
    values = params.load_yaml_defaults(ROOT / "config" / "coupalign.yaml")
    assert params.unknown_names(values) == []
    assert values == params.defaults()
    assert params.validate_changes({}, values) is None


def test_every_parameter_has_a_description_and_consistent_limits():
    for spec in params.PARAMETERS:
        assert len(spec.description) > 15, spec.name
        assert spec.problem(spec.default) is None, spec.name
        if spec.min is not None:
            assert spec.type in (int, float) and spec.min <= spec.default <= spec.max
        if spec.choices:
            assert spec.default in spec.choices


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"threshold": 1.5}, "threshold=1.5 is above the maximum 1"),
        ({"threshold": -0.1}, "below the minimum 0"),
        ({"threshold": "high"}, "threshold must be of type float, got str"),
        ({"threshold": True}, "threshold must be of type float, got bool"),
        ({"threshold": float("nan")}, "threshold=nan is not a finite number"),
        ({"max_rate_hz": float("inf")}, "max_rate_hz=inf is not a finite number"),
        ({"max_command_chars": 0}, "below the minimum 1"),
        ({"max_command_chars": 2.5}, "max_command_chars must be of type int, got float"),
        ({"backend": "tensorflow"}, "backend='tensorflow' is not one of auto, torch, onnxruntime, tensorrt"),
        ({"precision": "int4"}, "is not one of fp32, fp16, bf16"),
        ({"device": "gpu"}, "device='gpu' is not one of cpu, cuda"),
        ({"image_reliability": "sometimes"}, "is not one of best_effort, reliable"),
        ({"image_topic": ""}, "is empty"),
        ({"image_topic": "/camera//image"}, "contains '//'"),
        ({"image_topic": "/camera/image/"}, "ends with '/'"),
        ({"command_topic": "/coupalign/2nd"}, "invalid part '2nd'"),
        ({"command_topic": "has space"}, "invalid part 'has space'"),
        ({"checkpoint": "/no/such/model.pt"}, "'/no/such/model.pt' does not exist"),
        ({"depth_min_m": 5.0, "depth_max_m": 2.0}, "depth_min_m (5) must be below depth_max_m (2)"),
        ({"depth_topic": "/camera/depth"}, "camera_info_topic is empty"),
    ],
)
def test_invalid_changes_are_refused_with_a_reason(changes, reason):
    got = params.validate_changes(params.defaults(), changes)
    assert got is not None and reason in got, got


def test_valid_changes_pass(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"x")
    good = {
        "threshold": 1,  # an int is a valid float
        "device": "cuda",
        "checkpoint": str(model),
        "image_topic": "~/image",
        "command_topic": "speech/text",
        "depth_topic": "/camera/aligned_depth_to_color/image_raw",
        "camera_info_topic": "/camera/aligned_depth_to_color/camera_info",
        "use_sim_time": True,  # not ours: left to ROS
    }
    assert params.validate_changes(params.defaults(), good) is None


def test_configure_needs_a_checkpoint(tmp_path):
    assert "checkpoint' is empty" in params.configure_problem(params.defaults())
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    assert params.configure_problem({**params.defaults(), "checkpoint": str(model)}) is None


def test_bad_parameter_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just a list\n")
    with pytest.raises(ValueError, match="not a ros2 parameter file"):
        params.load_yaml_defaults(bad)
    bad.write_text("node:\n  params: {}\n")
    with pytest.raises(ValueError, match="no 'ros__parameters'"):
        params.load_yaml_defaults(bad)


def test_model_choices_are_the_segmenters_own():
    """One owner: the node offers exactly the backends, devices and precisions SegmenterOptions takes."""
    from coupalign_core.inference import options

    assert params.SPECS["backend"].choices is options.BACKENDS
    assert params.SPECS["device"].choices is options.DEVICES
    assert params.SPECS["precision"].choices is options.PRECISIONS
    for name in ("backend", "device", "precision"):  # the defaults are valid Segmenter options
        options.SegmenterOptions(**{name: params.SPECS[name].default})
