"""The ewoks graphs shipped inside the package (dfxm_online/workflow/graphs/*.json), so that a
wheel install finds them: `dfxm-online workflows --list` prints their paths. The repository's
workflows/ folder links to the same files."""

from __future__ import annotations

import json
from pathlib import Path

GRAPHS_DIR = Path(__file__).with_name("graphs")


def graph_names() -> list[str]:
    return sorted(p.stem for p in GRAPHS_DIR.glob("*.json"))


def graph_path(name: str) -> Path:
    """The path of a shipped graph by name ("post_scan"), or of a graph file given as a path."""
    path = GRAPHS_DIR / f"{name}.json"
    if path.is_file():
        return path
    given = Path(name)
    if given.suffix == ".json" and given.is_file():
        return given
    raise ValueError(f"no workflow {name!r} (shipped: {', '.join(graph_names())}; or a path to a .json graph)")


def load_graph(name: str) -> dict:
    """A graph as a dict (what crosses the broker to an ewoksjob worker)."""
    return json.loads(graph_path(name).read_text())
