"""The package's layers: imports point only down (or within a folder), and never in a circle."""
import ast
import pathlib

from tests import ROOT

PACKAGE = pathlib.Path(ROOT) / "copgen_jax"
# Lowest first. A module may import from its own folder and from lower layers only; the
# foundations (the package root's small modules and the diffusion maths) are one layer.
LAYERS = (
    ("codecs", "modalities", "defaults", "flagparse", "parallel", "checkpoint", "storage", "hub", "draws",
     "diffusion"),
    ("models",),
    ("data",),
    ("datasets", "latents"),
    ("trainers", "inference", "convert"),
    ("evaluate",),
    ("pipeline",),
    ("main",),
)
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: pathlib.Path, modules) -> set[str]:
    """Package modules that ``path`` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return {m for m in found if m in modules and m != "copgen_jax"}


def _graph():
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _part(module: str) -> str:
    return module.split(".")[1]


def test_every_folder_and_top_level_module_has_a_layer():
    parts = {_part(m) for m in _modules() if m != "copgen_jax"}
    assert parts <= set(RANK), f"add {sorted(parts - set(RANK))} to LAYERS"


def test_imports_point_down_or_within_their_folder():
    wrong = [f"{a} imports {b}" for a, deps in _graph().items() if a != "copgen_jax" for b in deps
             if _part(a) != _part(b) and RANK[_part(b)] >= max(RANK[_part(a)], 1)]
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if dep.startswith(node + "."):  # a package importing its own submodules is not a cycle
                continue
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
