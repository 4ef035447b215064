from pathlib import Path

import pytest

from animatediff.config import (
    Config,
    ConfigError,
    flatten,
    from_dict,
    load_config,
    option_docs,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]


def test_every_preset_loads():
    """(Every YAML file parsing, duplicate keys rejected: test_infra.)"""
    presets = sorted((REPO / "configs").glob("*.yaml"))
    assert {p.name for p in presets} >= {"tiny.yaml", "sd15_webvid.yaml"}
    for preset in presets:
        assert isinstance(load_config(preset), Config), preset


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        REPO / "configs/tiny.yaml", ["model.motion.num_layers=2", "sample.guidance_scale=3"]
    )
    assert cfg.model.motion.num_layers == 2
    assert cfg.sample.guidance_scale == 3.0 and isinstance(cfg.sample.guidance_scale, float)
    assert flatten(cfg)["model.motion.num_layers"] == 2
    assert load_config(None) == Config()
    # a round trip through plain data is lossless
    assert from_dict(Config, to_dict(cfg)) == cfg
    assert to_dict(cfg)["model"]["motion"]["num_layers"] == 2


@pytest.mark.parametrize(
    "override, option",
    [
        ("model.motion.num_layers=0", "model.motion.num_layers"),
        ("model.motion.nun_layers=2", "model.motion.nun_layers"),
        ("sample.height=65", "sample.height"),
        ("model.diffusion.beta_schedule=cosine", "model.diffusion.beta_schedule"),
        ("sample.num_frames=many", "sample.num_frames"),
        ("sample.context_overlap=16", "sample.context_overlap"),
    ],
)
def test_invalid_values_name_the_option(override, option):
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        load_config(REPO / "configs/tiny.yaml", [override])


@pytest.mark.parametrize("written", ["1e-4", "1E-4", "1.0e-4", "0.0001", ".0001", "+1e-4"])
def test_numbers_are_read_as_a_python_user_writes_them(written):
    assert load_config(None, [f"train.lr={written}"]).train.lr == pytest.approx(1e-4)
    # Strings that only look numeric elsewhere stay strings.
    assert load_config(None, [f"train.run_name=run-{written}"]).train.run_name == f"run-{written}"


def test_literal_options_take_their_own_type_only():
    assert load_config(None, ["train.zero_stage=3"]).train.zero_stage == 3
    for wrong in ("1", "3.0", "true", "'3'"):
        with pytest.raises(ConfigError, match="train.zero_stage: must be one of"):
            load_config(None, [f"train.zero_stage={wrong}"])


def test_every_config_field_is_documented():
    options = option_docs(Config)
    assert len(options) > 100
    undocumented = [option.name for option in options if not option.doc.strip()]
    assert not undocumented
    (lr,) = [option for option in options if option.name == "train.lr"]
    assert (lr.type, lr.default) == ("float", 1e-4) and "learning rate" in lr.doc


def config_dataclasses() -> list[type]:
    """Every dataclass defined in a module of ``animatediff/config/``."""
    import dataclasses
    import importlib
    import pkgutil

    import animatediff.config as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and dataclasses.is_dataclass(obj)
            and obj.__module__ == module.__name__
        ]
    return found


def test_every_field_of_every_config_dataclass_has_a_docstring():
    """Beyond the leaves of ``Config`` (the test above): the sections themselves (``model.base``)
    and the items of tuple fields (``model.base.loras`` entries, ``LoraConfig``), which
    ``option_docs`` does not list."""
    import dataclasses

    from animatediff.config import LoraConfig, ReproduceConfig, field_docs

    classes = config_dataclasses()
    assert len(classes) >= 20 and {Config, LoraConfig, ReproduceConfig} <= set(classes)
    undocumented = [
        f"{cls.__name__}.{f.name}"
        for cls in classes
        for f in dataclasses.fields(cls)
        if not field_docs(cls).get(f.name, "").strip()
    ]
    assert not undocumented


@pytest.mark.parametrize("job", ["train", "preprocess", "generate", "serve", "promote", "evaluate"])
def test_help_lists_the_jobs_own_options_and_examples(job, capsys):
    import importlib

    module = importlib.import_module(f"jobs.{job}")
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: python -m jobs.{job}" in text
    assert f"python -m jobs.{job} --config" in text  # its own examples
    for section in module.JOB.sections:
        assert f"  {section}." in text or f"  {section} (" in text, section
    if job != "train":
        assert "  train.max_steps" not in text


def test_user_errors_print_one_line_and_exit_2(capsys):
    from jobs import cli, train

    assert cli.run(train.main, ["--config", str(REPO / "configs/tiny.yaml"), "train.lr=x"]) == 2
    err = capsys.readouterr().err
    assert err == "error: train.lr: expected a number, got 'x'\n"
    with pytest.raises(ConfigError):
        cli.run(train.main, ["--debug", "train.lr=x"])


def test_the_preset_is_named_after_its_yaml_file_unless_it_names_itself(tmp_path):
    assert load_config(REPO / "configs/tiny.yaml").preset == "tiny"
    assert load_config(None).preset == ""
    named = tmp_path / "mine.yaml"
    named.write_text("preset: shared-name\n")
    assert load_config(named).preset == "shared-name"
    assert load_config(REPO / "configs/tiny.yaml", ["preset=other"]).preset == "other"
