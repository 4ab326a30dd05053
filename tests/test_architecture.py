"""The structure the code promises, read from the source: layering, no import circles, tasks without name checks,
one backward(), the encoder's constants in one place, light imports on light paths."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("semiseg", "semicd")
TASK_NAMES = {"segmentation", "change_detection", "change"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages."""
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module of ours that `name` imports, anywhere in the file (deferred and TYPE_CHECKING imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in MODULES else base)
    return {t for t in targets if t in MODULES and t != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _is_engine(name: str) -> bool:
    return (
        name.startswith("semiseg")
        and not name.startswith("semiseg.segmentation")
        and name != "semiseg.__main__"
    )


def test_the_segmentation_core_never_imports_the_change_detection_package():
    upward = sorted(
        f"{a} -> {b}"
        for a, deps in GRAPH.items()
        if a.startswith("semiseg")
        for b in deps
        if b.startswith("semicd")
    )
    assert upward == []


def test_the_engine_imports_no_task():
    leaks = sorted(
        f"{a} -> {b}" for a, deps in GRAPH.items() if _is_engine(a) for b in deps if not _is_engine(b)
    )
    assert leaks == []


def test_no_import_circles_between_files():
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in GRAPH:
        if name not in index:
            visit(name)
    assert circles == []
    assert GRAPH["semiseg.config"], "the import graph was read"  # guards against a parser that finds nothing


def _package_trees():
    for path in MODULES.values():
        yield path, ast.parse(path.read_text())


def _strings(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {s for e in node.elts for s in _strings(e)}
    return set()


def test_no_code_branches_on_a_task_name():
    found = []
    for path, tree in _package_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = set().union(*(_strings(n) for n in [node.left, *node.comparators])) & TASK_NAMES
                if names:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} compares with {sorted(names)}")
    assert found == []


def test_exactly_one_place_calls_backward_and_the_benchmark_times_it():
    calls = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path, tree in _package_trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "backward"
    ]
    assert len(calls) == 1 and calls[0].startswith("semiseg/train/step.py")
    bench = ast.parse((REPO / "tools" / "bench_train_step.py").read_text())
    ours = next(n for n in ast.walk(bench) if isinstance(n, ast.FunctionDef) and n.name == "bench_ours")
    assert any(isinstance(n, ast.Attribute) and n.attr == "from_config" for n in ast.walk(ours))
    assert not any(isinstance(n, ast.Attribute) and n.attr == "backward" for n in ast.walk(ours))


def test_patch_size_and_normalisation_constants_live_in_the_encoder_spec_only():
    owners = {REPO / "semiseg" / "models" / "specs.py"}
    found = []
    for path, tree in _package_trees():
        if path in owners:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in (0.485, 0.229, 0.456, 0.406, 0.224, 0.225):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} ImageNet statistic {node.value}")
            # patch arithmetic: side % 14, side // 14, side / 14, n * 14, or a PATCH-like name bound to 14
            operands = [node.left, node.right] if isinstance(node, ast.BinOp) else []
            if isinstance(node, ast.Assign) and any("patch" in ast.unparse(t).lower() for t in node.targets):
                operands = [node.value]
            if any(isinstance(o, ast.Constant) and o.value == 14 for o in operands):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} patch arithmetic with a literal 14")
    assert found == []


def test_the_repository_cites_no_document_its_users_do_not_have():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    cites = []
    for rel in tracked:
        if Path(rel).suffix in (".py", ".md", ".yaml", ".toml") and rel != "tests/test_architecture.py":
            text = (REPO / rel).read_text(errors="ignore")
            for marker in ("DESIGN A.", "DESIGN B.", "../shared/"):
                if marker in text:
                    cites.append(f"{rel}: {marker}")
    assert cites == []


# ------------------------------------------------------------------------------------------ light imports
def _scene_and_checkpoint(tmp_path: Path) -> tuple[Path, Path, Path]:
    import rasterio
    from rasterio.transform import from_origin

    from semiseg.models.checkpoints import export_model
    from semiseg.models.segmentor import build_model

    paths = []
    for name, seed in (("a.tif", 0), ("b.tif", 1)):
        data = np.random.default_rng(seed).integers(0, 255, (3, 40, 50), dtype=np.uint8)
        profile = dict(driver="GTiff", width=50, height=40, count=3, dtype="uint8", crs="EPSG:32631",
                       transform=from_origin(500000, 4000000, 1, 1))  # fmt: skip
        with rasterio.open(tmp_path / name, "w", **profile) as ds:
            ds.write(data)
        paths.append(tmp_path / name)
    checkpoint = export_model(build_model("tiny", 2, "absdiff"), tmp_path / "cd")
    return paths[0], paths[1], checkpoint


@pytest.mark.parametrize("polygons", [False, True])
def test_predict_loads_the_vector_stack_only_for_polygons(tmp_path, polygons):
    before, after, checkpoint = _scene_and_checkpoint(tmp_path)
    args = ["predict", "--before", str(before), "--after", str(after), "--checkpoint", str(checkpoint),
            "--out", str(tmp_path / "change.tif"), "--window", "28", "--workers", "0"]  # fmt: skip
    if polygons:
        args += ["--polygons", str(tmp_path / "change.gpkg")]
    code = (
        "import sys, json; from semicd.cli import main; rc = main(json.loads(sys.argv[1])); "
        "print(json.dumps([rc, sorted(m for m in ('geopandas', 'shapely', 'pyproj') if m in sys.modules)]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=300
    )
    rc, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rc == 0, proc.stderr
    assert (tmp_path / "change.tif").is_file()
    if polygons:
        assert "geopandas" in loaded  # the probe sees the import when it does happen
    else:
        assert loaded == []
