"""Scenario presets that make collaboration matter, and loading of simulator configs.

Each preset is plain data (a partial :class:`~coperception.sim.config.SimConfig` mapping) over the
defaults; a YAML config may start from one with ``preset: <name>`` and override any key.

* ``town`` - a 3 x 3 grid town with background traffic, cyclists and pedestrians; three
  connected vehicles near the central junction and one road-side unit on a corner.
* ``blocked_intersection`` - buildings flush with the sidewalk on every corner; the ego waits at a
  red light while cross traffic it cannot see passes in front of it; collaborators on the cross
  street and the far leg see that traffic.
* ``truck_merge`` - a truck in the right lane beside the ego hides a car that turns right from
  the cross street into the ego's road; a connected vehicle across the junction and a road-side
  unit on the near corner see it.
* ``rsu_blind_corner`` - the ego approaches a walled-in corner of the ring road; vehicles on the
  other leg are hidden by the corner building; a road-side unit on that corner sees both legs
  (ego + one RSU: the DAIR-V2X layout).
"""

from __future__ import annotations

from pathlib import Path

from coperception.config import from_dict, merge, read_yaml_with_bases
from coperception.errors import ConfigError
from coperception.sim.config import SimConfig

_CORNER_BUILDINGS = {"building_fill": 1.0, "building_setback": [0.0, 0.4], "building_lots": [2, 3]}

PRESETS: dict[str, dict] = {
    "town": {
        "traffic": {"vehicles": 40, "cyclists": 4, "pedestrians": 20},
        "agents": {"cavs": 3, "rsus": 1},
    },
    "blocked_intersection": {
        "town": {**_CORNER_BUILDINGS, "building_height": [15.0, 40.0]},
        "traffic": {"vehicles": 50, "cyclists": 2, "pedestrians": 16},
        "agents": {
            "cavs": 3, "rsus": 0, "ego_light": "red",
            "placements": [
                {"role": "ego", "cls": "car", "approach": "S", "lane": 0, "distance": 17.0},
                {"role": "npc", "cls": "car", "approach": "S", "lane": 0, "distance": 1.0, "speed": 0.0},
                {"role": "npc", "cls": "van", "approach": "S", "lane": 0, "distance": 8.5, "speed": 0.0},
                {"role": "cav", "cls": "car", "approach": "W", "lane": 0, "distance": 12.0},
                {"role": "cav", "cls": "car", "approach": "N", "lane": 0, "distance": 10.0},
                {"role": "npc", "cls": "car", "approach": "E", "lane": 0, "distance": 25.0},
                {"role": "npc", "cls": "truck", "approach": "E", "lane": 1, "distance": 15.0},
            ],
        },
    },
    "truck_merge": {
        "town": {**_CORNER_BUILDINGS, "building_height": [10.0, 30.0]},
        "traffic": {"vehicles": 45, "cyclists": 2, "pedestrians": 12},
        "agents": {
            "cavs": 2, "rsus": 1, "ego_light": "red",
            "placements": [
                {"role": "ego", "cls": "car", "approach": "S", "lane": 0, "distance": 9.0, "speed": 0.0},
                {"role": "npc", "cls": "car", "approach": "S", "lane": 0, "distance": 1.0, "speed": 0.0},
                {"role": "npc", "cls": "truck", "approach": "S", "lane": 1, "distance": 1.5, "speed": 0.0},
                {"role": "npc", "cls": "car", "approach": "E", "lane": 1, "distance": 8.0, "movement": "right"},
                {"role": "npc", "cls": "car", "approach": "E", "lane": 1, "distance": 22.0, "movement": "right"},
                {"role": "npc", "cls": "van", "approach": "E", "lane": 0, "distance": 14.0},
                {"role": "cav", "cls": "car", "approach": "N", "lane": 0, "distance": 4.0},
            ],
            "rsu_placements": [{"corner": "NE"}],
        },
    },
    "rsu_blind_corner": {
        "town": {**_CORNER_BUILDINGS, "building_height": [10.0, 25.0]},
        "traffic": {"vehicles": 40, "cyclists": 2, "pedestrians": 12},
        "agents": {
            "cavs": 1, "rsus": 1, "ego_junction": [0, 0], "ego_light": "red",
            "placements": [
                {"role": "ego", "cls": "car", "approach": "N", "lane": 0, "distance": 16.0},
                {"role": "npc", "cls": "car", "approach": "N", "lane": 0, "distance": 1.0, "speed": 0.0},
                {"role": "npc", "cls": "car", "approach": "N", "lane": 0, "distance": 8.0, "speed": 0.0},
                {"role": "npc", "cls": "car", "approach": "E", "lane": 0, "distance": 12.0},
                {"role": "npc", "cls": "car", "approach": "E", "lane": 0, "distance": 30.0},
                {"role": "npc", "cls": "van", "approach": "E", "lane": 1, "distance": 6.0},
                {"role": "npc", "cls": "car", "approach": "E", "lane": 1, "distance": 24.0},
            ],
            "rsu_placements": [{"corner": "NE"}],
        },
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def _preset_data(name: str, where: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"{where}: unknown preset {name!r}; known: {preset_names()}")
    return merge({"preset": name}, PRESETS[name])


def load_sim_config(path: str | Path | None = None, preset: str | None = None,
                    overrides: dict | None = None) -> SimConfig:
    """Resolve a config: a preset (``preset`` argument, the YAML's ``preset:`` key, or "town"),
    then the YAML file's keys, then ``overrides`` (a nested mapping); validated before returning.

    Unknown keys, wrong types and impossible values raise ConfigError naming the file and key.
    """
    data: dict = {}
    where = "<config>"
    if path is not None:
        where = str(path)
        data = read_yaml_with_bases(path)
    name = preset or data.get("preset") or "town"
    if not isinstance(name, str):
        raise ConfigError(f"{where}.preset: expected a preset name, got {name!r}")
    resolved = merge(_preset_data(name, where), data)
    resolved["preset"] = name
    if overrides:
        resolved = merge(resolved, overrides)
    cfg = from_dict(SimConfig, resolved, where)
    try:
        return cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
