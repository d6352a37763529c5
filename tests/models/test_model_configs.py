"""Every YAML in models/ loads and validates, and builds a detector that runs forward/backward."""

from pathlib import Path

import pytest

from coperception.errors import ConfigError
from coperception.models.config import load_experiment

MODELS = sorted(p for p in (Path(__file__).parents[2] / "models").glob("*.yaml") if not p.name.startswith("_"))


def test_there_are_configs():
    assert len(MODELS) >= 5


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_config_loads(path):
    cfg = load_experiment(path)
    assert cfg.name == path.stem
    assert cfg.data.grid.nx > 0


def test_unknown_key_and_bad_args_fail_at_load(tmp_path):
    base = Path(__file__).parents[2] / "models" / "_base.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {base}\nname: bad\ntrain: {{epochz: 3}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml\.train: unknown key\(s\) \['epochz'\]"):
        load_experiment(bad)
    bad.write_text(f"base: {base}\nname: bad\nmodel: {{encoder: {{args: {{layer_num: [1]}}}}}}\n")
    with pytest.raises(ConfigError, match=r"model\.encoder\.args: unknown argument\(s\) \['layer_num'\]"):
        load_experiment(bad)
    bad.write_text(f"base: {base}\nname: bad\nmodel: {{fusion: {{name: maxx}}}}\n")
    with pytest.raises(ConfigError, match=r"model\.fusion\.name 'maxx' unknown"):
        load_experiment(bad)
    bad.write_text(f"base: {base}\nname: bad\ntrain: {{epochs: three}}\n")
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_experiment(bad)
