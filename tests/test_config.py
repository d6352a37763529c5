from dataclasses import dataclass, field
from typing import Literal

import pytest

from coperception import config
from coperception.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    size: tuple[float, float, float]
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    steps: int = 3
    tags: tuple[str, ...] = ()
    extra: dict[str, float] = field(default_factory=dict)
    maybe: float | None = None


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_converts_types_and_defaults(tmp_path):
    p = _write(tmp_path, "x.yaml", "name: n\ninner: {size: [1, 2, 3.5]}\ntags: [u, v]\nextra: {k: 2}\n")
    cfg = config.load(Outer, p)
    assert cfg == Outer("n", Inner((1.0, 2.0, 3.5)), 3, ("u", "v"), {"k": 2.0}, None)
    assert isinstance(cfg.inner.size[0], float)


def test_unknown_key_names_file_and_key(tmp_path):
    p = _write(tmp_path, "bad.yaml", "name: n\ninner: {size: [1, 2, 3], colour: red}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml\.inner: unknown key\(s\) \['colour'\]"):
        config.load(Outer, p)


@pytest.mark.parametrize("text, match", [
    ("name: n\ninner: {size: [1, 2]}\n", r"inner\.size: expected 3 values"),
    ("name: n\ninner: {size: [1, 2, x]}\n", r"inner\.size\[2\]: expected a number"),
    ("name: n\ninner: {size: [1, 2, 3], mode: c}\n", r"inner\.mode: 'c' is not one of"),
    ("name: n\ninner: {size: [1, 2, 3]}\nsteps: 2.5\n", r"steps: expected an integer"),
    ("inner: {size: [1, 2, 3]}\n", r"name: required key is missing"),
    ("name: [n\n", r"line 2.*malformed YAML"),
    ("- a\n- b\n", r"top level must be a mapping"),
])
def test_bad_values_fail_clearly(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        config.load(Outer, _write(tmp_path, "c.yaml", text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        config.load(Outer, tmp_path / "nope.yaml")


def test_base_chain_merges_and_detects_cycles(tmp_path):
    _write(tmp_path, "base.yaml", "name: base\ninner: {size: [1, 1, 1], mode: b}\nsteps: 7\n")
    child = _write(tmp_path, "child.yaml", "base: base.yaml\nname: child\ninner: {size: [2, 2, 2]}\n")
    cfg = config.load(Outer, child)
    assert cfg.name == "child" and cfg.steps == 7 and cfg.inner == Inner((2.0, 2.0, 2.0), "b")
    _write(tmp_path, "a.yaml", "base: b.yaml\n")
    _write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular base chain"):
        config.load(Outer, tmp_path / "a.yaml")


def test_round_trip_to_dict(tmp_path):
    cfg = Outer("n", Inner((1.0, 2.0, 3.0)), tags=("a",))
    assert config.from_dict(Outer, config.to_dict(cfg)) == cfg


def test_constructor_args_checked():
    class Module:
        def __init__(self, channels: int, ratio: float = 0.5, *, name: str = "m"):
            pass

    assert config.check_constructor_args(Module, {"channels": 4, "ratio": 1}, "f: args") == {"channels": 4, "ratio": 1.0}
    with pytest.raises(ConfigError, match=r"f: args: unknown argument\(s\) \['chanels'\]"):
        config.check_constructor_args(Module, {"chanels": 4}, "f: args")
    with pytest.raises(ConfigError, match=r"f: args\.channels: expected an integer"):
        config.check_constructor_args(Module, {"channels": "4"}, "f: args")


def test_component_with_another_name_replaces_the_base_component():
    base = {"encoder": {"name": "a", "args": {"x": 1}}, "train": {"lr": 1}}
    assert config.merge(base, {"encoder": {"name": "b", "args": {"y": 2}}})["encoder"] == {"name": "b", "args": {"y": 2}}
    assert config.merge(base, {"encoder": {"name": "a", "args": {"y": 2}}})["encoder"] == {
        "name": "a", "args": {"x": 1, "y": 2}}
    assert config.merge(base, {"encoder": {"args": {"y": 2}}})["encoder"]["args"] == {"x": 1, "y": 2}
