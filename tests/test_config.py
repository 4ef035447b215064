from pathlib import Path

import pytest
import yaml

from animatediff.config import Config, ConfigError, flatten, from_dict, load_config, to_dict

REPO = Path(__file__).resolve().parents[1]


def test_every_yaml_in_the_repo_parses_and_presets_load():
    yamls = [
        p
        for p in REPO.rglob("*.y*ml")
        if p.suffix in (".yaml", ".yml") and ".venv" not in p.parts and "outputs" not in p.parts
    ]
    assert yamls, "the repo has YAML presets"
    for path in yamls:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs, path
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
