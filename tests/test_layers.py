"""The architecture as a contract: a module imports (at module level) only modules of its own or a
lower layer, and module-level imports form no cycle. Function-level imports that reach up (a
command's lazy import of a suite) are the allowed exceptions: they run at call time, never at
import."""

from __future__ import annotations

import ast
from pathlib import Path

import vidpipe

LAYERS = [
    {"errors", "coco", "boxes", "inputs", "runtime", "profiling", "config", "synth", "agreement", "timeline", "gil",
     "kernels", "environ", "cameras", "outputs", "yuv", "installed"},
    {"sources", "preprocess", "letterbox", "model", "postprocess", "nms", "sinks", "weights", "track",
     "analytics", "draw", "events", "metrics", "view", "monitor"},  # the stages, and what a run reports
    {"models", "models.ssd300", "models.yolo", "models.yolo_yaml", "models.boxes", "models.tv"},  # detector families
    {"detector", "graphs"},
    {"engine", "engine.items", "engine.live", "engine.plan", "engine.decode", "engine.batching", "engine.order",
     "engine.schedule", "engine.write"},  # schedules the stages
    {"scale", "livescale"},
    {"api", "bench", "ladder", "cli", "__init__"},  # commands and the API on top
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
ROOT = Path(vidpipe.__file__).parent


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
    return rel.removesuffix(".__init__") if rel != "__init__" else rel


def _imports(path: Path, module: str) -> set[str]:
    """vidpipe modules imported by ``path`` at module level (not inside functions)."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    if module == "__init__":
        package = []
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join([*base, node.module] if node.module else base)
            names = [f"{target}.{a.name}" if target else a.name for a in node.names]
            out |= {n for n in names if n in RANK} or ({target} if target in RANK else set())
    return out


def test_every_module_has_a_layer():
    modules = {_module(p) for p in ROOT.rglob("*.py")}
    assert modules - set(RANK) == set() and set(RANK) - modules == set()


def test_modules_import_only_their_layer_or_below_and_no_cycle():
    graph = {_module(p): _imports(p, _module(p)) for p in ROOT.rglob("*.py")}
    upward = [(m, t) for m, ts in graph.items() for t in ts if RANK[t] > RANK[m]]
    assert upward == []
    seen: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, path: list[str]) -> None:
        assert seen.get(m) != 1, f"import cycle: {' -> '.join(path + [m])}"
        if seen.get(m) == 2:
            return
        seen[m] = 1
        for t in graph[m]:
            visit(t, path + [m])
        seen[m] = 2

    for m in graph:
        visit(m, [])
