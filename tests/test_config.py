"""The configuration models: one line per problem, naming the key, and the registries they name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dfxm_online.config import (
    ACCUMULATOR_NAMES,
    PREPROCESS_STEPS,
    ConfigError,
    analysis_config,
    load_config,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"background": "bright"}, "analysis.background='bright': Input should be 'auto', 'dark', 'edges' or 'none'"),
    ({"accumulators": ["pcaa"]}, "analysis.accumulators.0='pcaa': Input should be 'projections'"),
    ({"preprocess": [{"step": "blur"}]}, "unknown preprocess step 'blur' (entry 0); known: dark, hot_pixels"),
    ({"moment_window": 0.5}, "analysis.moment_window=0.5: 0 (off) or 1 to 10 standard deviations"),
    ({"rolling_window": 4}, "analysis.rolling_window=4: must be odd"),
    ({"batch_size": "64"}, "analysis.batch_size='64': expected int"),
    ({"live_binning": 0}, "live_binning=0: Input should be 'auto' or Input should be greater than or equal to 1"),
    ({"dark_pattern": "("}, "dark_pattern='(': not a regular expression"),
])
def test_bad_values_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, **overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_keys_in_a_file_and_in_code(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[analysis]\nbackgrund = 'dark'\n")
    with pytest.raises(ConfigError, match=r"^unknown key analysis.'backgrund'$"):
        load_config(path)
    path.write_text("publish_perod = 1\n")
    with pytest.raises(ConfigError, match=r"^unknown key 'publish_perod'$"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'fancy'"):
        analysis_config(fancy=True)


def test_the_registries_build_exactly_the_names_the_config_accepts():
    from dfxm_online.online.preprocess import STEPS
    from dfxm_online.online.registry import REGISTRY

    assert tuple(REGISTRY) == ACCUMULATOR_NAMES
    assert tuple(STEPS) == PREPROCESS_STEPS
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    assert all(f"`{name}`" in guide for name in (*ACCUMULATOR_NAMES, *PREPROCESS_STEPS))


def test_config_imports_nothing_from_online():
    tree = ast.parse((ROOT / "dfxm_online" / "config.py").read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [m for m in imported if "online" in m], imported


def test_shipped_config_matches_the_defaults():
    shipped = load_config(ROOT / "services" / "dfxm-online.toml")
    assert shipped.live_binning == "auto" and shipped.latency_budget == 0.5
    assert shipped.analysis.moment_window == 3.0 and shipped.analysis.background == "auto"
