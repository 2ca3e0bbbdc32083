"""The example training configs in configs/: valid, complete, and the quickstart's own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from allegro_deploy.models.config import ModelConfig
from allegro_deploy.models.train import DataOptions, OutputOptions, TrainConfig, TrainingOptions
from allegro_deploy.quickstart import MODEL, TRAINING

CONFIGS = Path(__file__).parents[1] / "configs"


def test_example_configs_are_valid() -> None:
    for name in ("quickstart.yaml", "production.yaml"):
        TrainConfig.from_dict(yaml.safe_load((CONFIGS / name).read_text()))


def test_production_config_names_every_option() -> None:
    text = (CONFIGS / "production.yaml").read_text()
    options = [
        f.name
        for cls in (DataOptions, ModelConfig, TrainingOptions, OutputOptions)
        for f in dataclasses.fields(cls)
    ]
    missing = [name for name in options if f"{name}:" not in text]
    assert not missing, missing


def test_quickstart_config_is_the_quickstart_run() -> None:
    config = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    assert config["model"] == MODEL and config["training"] == TRAINING
