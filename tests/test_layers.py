"""The package layers: a module imports only from layers below its own (lazy imports inside
functions included; `if TYPE_CHECKING:` blocks excluded), and packages of the same layer stay
independent of each other. This is what keeps "one home per concern" true as the code grows."""

from __future__ import annotations

import ast

from tests.conftest import REPO

# (module prefix, layer), most specific first.
LAYERS = [
    ("pipeline.__main__", 9),
    ("pipeline.runner", 8),
    ("pipeline.stages", 7),
    ("pipeline.report", 6),
    ("pipeline.evaluation", 6),
    ("pipeline.training", 5),
    ("pipeline.config", 4),
    ("pipeline.distill", 3),
    ("export", 3),
    ("pipeline.models", 2),
    ("pipeline.data", 2),
    ("serving", 2),
    ("pipeline.artifacts", 1),
    ("pipeline.errors", 0),
    ("pipeline.timing", 0),
    ("pipeline.preprocessing", 0),
    ("pipeline.gates", 0),
    ("pipeline.images", 0),
    ("pipeline", 0),
]
PACKAGES = ("pipeline", "export", "serving")


def _group(module: str) -> tuple[str, int]:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, layer
    raise AssertionError(f"{module} is in no layer; add it to LAYERS")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = ast.parse(f.read_text())
    return out


def _imports(tree: ast.Module, known: set[str]) -> list[str]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names += [n for n in subs if n in known] or [node.module]
    return [n for n in names if n.split(".")[0] in PACKAGES]


def test_no_module_imports_upward_or_sideways() -> None:
    bad = []
    modules = _modules()
    for module, tree in modules.items():
        group, layer = _group(module)
        for target in _imports(tree, set(modules)):
            tgroup, tlayer = _group(target)
            if tgroup == group:
                continue
            if tlayer > layer or (tlayer == layer and tgroup != group):
                bad.append(f"{module} (layer {layer}) imports {target} (layer {tlayer})")
    assert not bad, "\n".join(bad)


def test_stage_folders_are_named_only_by_the_stage_table() -> None:
    """No code outside the stage table spells a stage folder such as `04_export`."""
    import re

    pattern = re.compile(r"['\"/]0\d_(train|prune|export|validate)\b")
    hits = [
        f"{f.relative_to(REPO)}:{i}"
        for pkg in PACKAGES
        for f in (REPO / pkg).rglob("*.py")
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert not hits, hits


def test_no_stage_imports_another_stage() -> None:
    """A stage reads its inputs, calls library code and writes its folder: what two stages
    share is library code, so only the stage table imports the stage modules."""
    modules = _modules()
    stages = {m for m in modules if m.startswith("pipeline.stages.")}
    bad = [
        f"{module} imports {target}"
        for module in sorted(stages)
        for target in _imports(modules[module], set(modules))
        if target == "pipeline.stages" or target.startswith("pipeline.stages.")
    ]
    assert not bad, "\n".join(bad)
    table = _imports(modules["pipeline.stages"], set(modules))
    assert {t for t in table if t.startswith("pipeline.stages.")} == stages
