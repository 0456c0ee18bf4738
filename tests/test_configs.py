"""A mixer's Hydra config and its class never disagree silently: with no experiment setting
anything, every value a config writes is the constructor's default (``null`` means "the default");
what a published recipe changes, the experiment says (``published_alpha``, ``published_mixer``)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import openmix
from openmix.cli.train import CONFIG_DIR

MIXER_CONFIGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "mixer").glob("*.yaml") if p.stem != "vanilla")
RECIPE_KEYS = ("published_alpha", "published_mixer", "published_min_lr")


def constructor_defaults(cls: type) -> dict[str, Any]:
    """Every keyword the class takes, through ``**kwargs`` up its bases, with the nearest default."""
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                defaults.setdefault(name, param.default)
    return defaults


def config_without_recipe(name: str) -> dict[str, Any]:
    """``configs/mixer/<name>.yaml`` resolved as if no experiment set a published value."""
    node = OmegaConf.merge({key: {} for key in RECIPE_KEYS}, OmegaConf.load(Path(CONFIG_DIR) / "mixer" / f"{name}.yaml"))
    resolved = OmegaConf.to_container(node, resolve=True)
    return {key: value for key, value in resolved.items() if key not in RECIPE_KEYS}


def same(a: Any, b: Any) -> bool:
    as_list = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731  (YAML has lists, classes tuples)
    return as_list(a) == as_list(b)


@pytest.mark.parametrize("name", MIXER_CONFIGS)
def test_a_mixer_config_writes_only_its_classs_defaults(name):
    config = config_without_recipe(name)
    defaults = constructor_defaults(openmix.registry.get(config.pop("name")))
    unknown = sorted(set(config) - set(defaults))
    assert not unknown, f"{name}.yaml sets {unknown}, which the class does not take"
    differ = {key: (value, defaults[key]) for key, value in config.items()
              if value is not None and not same(value, defaults[key])}
    assert not differ, f"{name}.yaml disagrees with the class (config, class): {differ}"


def test_the_openmixup_experiments_set_resizemix_as_openmixup_ran_it():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for experiment, use_alpha in [("cifar100_r18", True), ("cifar10_r18", True), ("tinyimagenet_r18", True),
                                      ("imagenet_r50", True), ("fashion_mnist_r18", False), ("quick", False)]:
            cfg = compose("train", overrides=[f"experiment={experiment}", "mixer=resizemix"])
            assert cfg.mixer.use_alpha is use_alpha, experiment
