"""The architecture's rules, checked on the source: derd/ is a plain library (no Ray, no MLflow),
its import graph has no cycle, tuning/analysis build on it, not the other way round, and the floor plan
between tuning and analysis (``RECORD_LAYER``, ``REPORT_WRITERS``) holds (docs/layout.md)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _imports(path: Path, typing_too: bool = False) -> set[str]:
    """Modules a file imports at run time (lazy imports inside functions count too); with ``typing_too``,
    also the imports for type checkers only (``if TYPE_CHECKING:``), which a layering must not need either."""
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only and not typing_too:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_derd_imports_neither_ray_nor_mlflow_nor_the_tools_built_on_it():
    for path in (REPO / "derd").rglob("*.py"):
        bad = {
            m for m in _imports(path) if m.split(".")[0] in ("ray", "mlflow", "optuna", "tuning", "analysis")
        }
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


# The floor plan. The search's record layer (its MLflow names, folder layout and store checks) imports only derd;
# analysis reads records through it; the live search never imports analysis; one module of tuning does, the one that
# writes the final report and tags the front.
RECORD_LAYER = {"tuning.records", "tuning.store"}
REPORT_WRITERS = {"tuning.summary"}


def _project(path: Path, package: str) -> set[str]:
    return {m for m in _imports(path, typing_too=True) if m.split(".")[0] == package}


def test_analysis_reads_the_search_only_through_its_record_layer():
    for path in (REPO / "analysis").rglob("*.py"):
        tuning = {
            m
            for m in _project(path, "tuning")
            if m not in RECORD_LAYER and m.rsplit(".", 1)[0] not in RECORD_LAYER
        }
        assert not tuning, f"{path.relative_to(REPO)} imports {sorted(tuning)}"


def test_the_record_layer_imports_only_derd_and_itself():
    for module in RECORD_LAYER:
        path = REPO / Path(*module.split(".")).with_suffix(".py")
        bad = {
            m
            for m in _imports(path, typing_too=True)
            if m.split(".")[0] in ("analysis", "tuning", "ray", "optuna")
            and m not in RECORD_LAYER
            and m.rsplit(".", 1)[0] not in RECORD_LAYER
        }
        assert not bad, f"{module} imports {sorted(bad)}"


def test_the_live_search_imports_nothing_from_analysis():
    """Only the module that writes the final report and tags the front imports analysis: the scheduler, the
    stage-I pool, the simulator, the checks and the logger rank trials with derd.pareto."""
    importers = {_module(p) for p in (REPO / "tuning").rglob("*.py") if _project(p, "analysis")}
    assert importers <= REPORT_WRITERS, sorted(importers - REPORT_WRITERS)


def test_the_pareto_maths_is_pure():
    assert not {m.split(".")[0] for m in _imports(REPO / "derd" / "pareto.py", typing_too=True)} - {
        "__future__",
        "math",
        "typing",
    }


def test_methods_models_and_datasets_register_through_the_one_registry():
    """One mechanism (derd.registry): each kind's registry is a Registry, and no other module keeps a dict of
    its own for them."""
    for path in ("derd/methods/registry.py", "derd/models/registry.py", "derd/data.py"):
        assert "derd.registry" in _imports(REPO / path), path


def test_no_module_edits_sys_path_outside_benchmarks():
    """Commands are installed (setup.cfg's entry points) and scripts run by path import the installed packages."""
    for folder in ("derd", "tuning", "analysis", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            uses = [
                n.lineno
                for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.Attribute)
                and n.attr == "path"
                and isinstance(n.value, ast.Name)
                and n.value.id == "sys"
            ]
            assert not uses, f"{path.relative_to(REPO)}:{uses[0]} touches sys.path"


def _graph(packages: tuple[str, ...] = ("derd",)) -> dict[str, set[str]]:
    """The packages' modules -> the modules of them each imports: at run time, inside functions and for type
    checkers alike. Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so it depends on
    them too (a module's own packages excepted: they are running already); a package that imports its children
    with ``pkgutil`` depends on each of them."""
    files = {_module(p): p for package in packages for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for m, p in files.items():
        direct = {d for d in _imports(p, typing_too=True) if d in files}
        if "pkgutil.iter_modules" in p.read_text() and p.name == "__init__.py":
            direct |= {d for d in files if d.startswith(m + ".") and d.count(".") == m.count(".") + 1}
        parents = {".".join(d.split(".")[:i]) for d in direct for i in range(1, d.count(".") + 1)}
        graph[m] = {d for d in direct | parents if d in files and d != m and not m.startswith(d + ".")}
    return graph


def _derd_graph() -> dict[str, set[str]]:
    return _graph(("derd",))


def _assert_acyclic(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_derd_import_graph_has_no_cycle_type_checking_imports_included():
    _assert_acyclic(_derd_graph())


def test_tuning_and_analysis_form_no_import_cycle():
    """tuning.summary imports analysis and analysis imports tuning's record layer, and no chain of imports leads
    back (function-level imports included)."""
    _assert_acyclic(_graph(("tuning", "analysis")))


def test_the_method_registry_is_the_bottom_layer_and_the_config_imports_it_at_its_top():
    """derd.methods.registry imports nothing of derd but the shared registry, which imports only the errors;
    derd.config and derd.experts import it at their top; nothing the methods package's __init__ imports leads
    to derd.config."""
    graph = _derd_graph()
    assert graph["derd.registry"] <= {"derd.errors"}
    assert graph["derd.methods.registry"] <= {"derd.registry"}
    for module in ("config", "experts"):
        tree = ast.parse((REPO / "derd" / f"{module}.py").read_text())
        top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
        assert "derd.methods.registry" in top, module
    seen, todo = set(), ["derd.methods"]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += graph[node]
    assert "derd.config" not in seen, sorted(seen)


# Private names of PyTorch itself that this project uses on purpose (the rule is about Ray,
# Optuna and the project's own modules).
TORCH_PRIVATE = {
    "_foreach_mul",
    "_foreach_add",
    "_functorch",
    "_python_dispatch",
    "_overloadpacket",
    "_forward_hooks",
}
# The one exception to "public names only": the token preflight of a Ray cluster (tuning/checks.py). Ray 2.60 has no
# public call that asks a head whether it wants a token, or re-reads RAY_AUTH_MODE once Ray is imported; if these
# move, the preflight's imports fail inside the check, which then leaves joining to ray.init and its own error.
RAY_TOKEN_PREFLIGHT = {"tuning/checks.py": {"ray._private.services", "ray._raylet"}}
# Optuna's cache over an SQL store, extended by the driver's study storage; if Optuna moves it, the search
# falls back to Optuna's own storage (tuning.study_storage.driver_storage), so a move costs speed, not a search
OPTUNA_CACHE = "tuning/study_storage.py"


def _defined_here(tree: ast.AST) -> set[str]:
    """Private names a file defines itself: functions, classes, attributes it assigns, names it binds."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def test_no_module_reaches_into_another_modules_private_names():
    """No ``x._name`` of Ray, Optuna or another module of this project outside the file that defines
    it (public API only: a resumed search must not break when a dependency's internals move)."""
    offences = []
    for folder in ("derd", "tuning", "analysis", "benchmarks", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            if str(path.relative_to(REPO)) == OPTUNA_CACHE:
                continue
            tree = ast.parse(path.read_text())
            own = _defined_here(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute):
                    name = node.attr
                elif isinstance(node, ast.ImportFrom) and node.module:
                    offences += [
                        f"{path.relative_to(REPO)}: from {node.module} import {a.name}"
                        for a in node.names
                        if a.name.startswith("_")
                        and node.module.split(".")[0] != "torch"
                        and f"{node.module}.{a.name}"
                        not in RAY_TOKEN_PREFLIGHT.get(str(path.relative_to(REPO)), ())
                    ]
                    offences += [
                        f"{path.relative_to(REPO)}: {node.module}"
                        for part in node.module.split(".")
                        if part.startswith("_")
                        and node.module.split(".")[0] in ("ray", "optuna")
                        and node.module not in RAY_TOKEN_PREFLIGHT.get(str(path.relative_to(REPO)), ())
                    ]
                    continue
                else:
                    continue
                if (
                    name.startswith("_")
                    and not name.startswith("__")
                    and name not in own
                    and name not in TORCH_PRIVATE
                ):
                    offences.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not offences, "private names used across modules:\n" + "\n".join(offences)
