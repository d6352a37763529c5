"""The direct YAML emitter reads back identically through PyYAML (safe and full loaders)."""

import math

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from coperception.data.formats.yamlio import dump_yaml_text, load_yaml_text

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                    st.floats(allow_nan=False, width=64), st.text(max_size=12))
keys = st.one_of(st.integers(-10**6, 10**6), st.text(min_size=1, max_size=10))
trees = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                     st.dictionaries(keys, kids, max_size=4)), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, trees, max_size=6))
def test_emitter_round_trips_through_pyyaml(data):
    text = dump_yaml_text(data)
    assert yaml.safe_load(text) == (data or None) or (data == {} and yaml.safe_load(text) in ({}, None))


def test_opv2v_like_frame_and_float_spellings():
    data = {"lidar_pose": np.array([1e-5, -2.5e20, 3.0, 0.0, -180.0, 1e300]), "ego_speed": np.float32(1.5),
            "vehicles": {1203: {"angle": [0.0, 90.5, 0.0], "extent": [2.25, 1.0, 0.78], "obj_type": "Car"}},
            "camera0": {"extrinsic": np.eye(4).tolist()}, "plan_trajectory": [], "yes": "no"}
    text = dump_yaml_text(data)
    back = yaml.safe_load(text)
    assert back["lidar_pose"] == pytest.approx([1e-5, -2.5e20, 3.0, 0.0, -180.0, 1e300])
    assert all(isinstance(v, float) for v in back["lidar_pose"])
    assert back["vehicles"][1203]["obj_type"] == "Car" and 1203 in back["vehicles"]
    assert back["plan_trajectory"] == [] and back["yes"] == "no"
    assert load_yaml_text(text)["camera0"]["extrinsic"] == np.eye(4).tolist()
    assert math.isnan(yaml.safe_load(dump_yaml_text({"x": float("nan")}))["x"])
