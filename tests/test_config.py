"""Config: defaults, profiles, file and --set overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config
from pipeline.errors import UserError
from tests.conftest import last_error_line, run_cli


def test_layers_apply_in_order(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("epochs = 7\nmodel = 'simple'\nzoom = 0.2\n")
    cfg = config.resolve("tiny", f, {"epochs": "9", "augment": "false"})
    assert cfg.profile == "tiny" and cfg.folds == 2  # from the profile
    assert cfg.model == "simple" and cfg.zoom == 0.2  # from the file
    assert cfg.epochs == 9 and cfg.augment is False  # --set wins


def test_yaml_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("epochs: 4\nlearning_rate: 0.01\n")
    (tmp_path / "c.json").write_text('{"folds": 3}')
    assert config.resolve("cpu", tmp_path / "c.yaml").learning_rate == 0.01
    assert config.resolve("cpu", tmp_path / "c.json").folds == 3


def test_each_model_name_builds_its_own_network() -> None:
    """Every name the config accepts builds a model, and each a different network: the key
    chooses the architecture (MODELS is derived from MODEL_NAMES, so comparing the two names
    would prove nothing)."""
    from pipeline.modeling.model import build_model

    shapes = {}
    for name in config.MODEL_NAMES:
        model = build_model(config.resolve("tiny", None, {"model": name}))
        assert model.name == name and model.output_shape == (None, 10)
        shapes[name] = (tuple(type(layer).__name__ for layer in model.layers), model.count_params())
    assert len(set(shapes.values())) == len(shapes), shapes


@pytest.mark.parametrize("sets, message", [
    ({"epoch": "3"}, "unknown config key 'epoch'"),
    ({"epochs": "three"}, "epochs='three' is not a valid int"),
    ({"epochs": "0"}, "epochs=0 must be at least 1"),
    ({"folds": "1"}, "folds=1 must be at least 2"),
    ({"augment": "maybe"}, "augment='maybe' is not a valid bool"),
    ({"model": "resnet"}, "model='resnet' must be one of simple, deep, lean, strided, deotte"),
    ({"ema": "1"}, "ema=1.0 must be in [0, 1) (0 = no weight averaging)"),
    ({"adam_beta_2": "1.5"}, "adam_beta_2=1.5 must be in (0, 1)"),
    ({"subsample": "1.5"}, "subsample=1.5 must be in (0, 1]"),
    ({"lr_schedule": "step"}, "lr_schedule='step' must be one of"),
    ({"pseudo_keep": "0"}, "pseudo_keep=0.0 must be in (0, 1]"),
    ({"pseudo_from": "../cpu"}, "pseudo_from='../cpu' must be the name of a finished run"),
])
def test_bad_values_name_the_key(sets: dict[str, str], message: str) -> None:
    with pytest.raises(UserError, match=None) as err:
        config.resolve("cpu", None, sets)
    assert message in str(err.value)


@pytest.mark.parametrize("text, suffix, message", [
    ("epochs = [", ".toml", "malformed config file"),
    ("epochs: [1,", ".yaml", "malformed config file"),
    ("- 1\n- 2\n", ".yaml", "expected a table"),
    ("epochs = 3", ".ini", "must end in .toml"),
])
def test_bad_files(tmp_path: Path, text: str, suffix: str, message: str) -> None:
    f = tmp_path / f"c{suffix}"
    f.write_text(text)
    with pytest.raises(UserError) as err:
        config.resolve("cpu", f)
    assert str(f) in str(err.value) and message in str(err.value)


def test_set_syntax_and_run_names() -> None:
    with pytest.raises(UserError, match="expected key=value"):
        config.parse_sets(["epochs"])
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(UserError, match="--run"):
            config.check_name(bad)
        with pytest.raises(UserError, match="--study"):
            config.check_name(bad, "--study")
    assert config.check_name("cpu-2.v1") == "cpu-2.v1"


def test_cli_config_error_is_one_line(tmp_path: Path) -> None:
    proc = run_cli("train", "--set", "epochs=-2", "--runs-dir", str(tmp_path), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error_line(proc) == "error: config: epochs=-2 must be at least 1"
    assert not any(tmp_path.iterdir())
    proc = run_cli("train", "--run", "../evil", "--runs-dir", str(tmp_path), check=False)
    assert proc.returncode == 2 and "no path separators" in last_error_line(proc)
