"""The stage registry (osmf_lib/night.py) against the code it describes: what each task reads has
a writer earlier in the night, every task has its job, the GPU tasks are the torch ones, and the
README shows the registry's table."""

import ast
import re
from functools import cache
from pathlib import Path

from typer.testing import CliRunner

from osmf_lib.cli import app
from osmf_lib.config import PROJECT_ROOT, Config
from osmf_lib.night import NIGHT, PREFLIGHT, Model, edges, markdown_table, upstream, writers
from osmf_lib.tables import SERVING_ASSIGNMENTS, TABLES, Table

ORDER = {task.name: i for i, task in enumerate(NIGHT)}
JOBS = PROJECT_ROOT / "jobs"


def _ancestors(name: str) -> set[str]:
    """Every task before `name` along the registry's edges."""
    direct = {before for before, after in edges() if after == name}
    return direct.union(*(_ancestors(before) for before in direct))


def test_what_a_task_reads_is_written_earlier_in_the_night_or_comes_from_outside():
    outside = set()
    for task in NIGHT:
        for resource in task.reads:
            others = [writer.name for writer in writers(resource) if writer is not task]
            if not others:
                outside.add(resource)
            assert all(ORDER[other] < ORDER[task.name] for other in others), (task.name, resource.name, others)
    # The landing files' tables are ingest_events'; only the ad server's answers (`osmf synth serve`)
    # are written outside the night.
    assert outside == {SERVING_ASSIGNMENTS}


def test_the_edges_run_forward_and_are_the_fewest_that_keep_every_read_after_its_writers():
    assert all(ORDER[before] < ORDER[after] for before, after in edges())
    for task in NIGHT:
        needed = {writer.name for resource in task.reads for writer in writers(resource)} - {task.name}
        ancestors = _ancestors(task.name)
        assert needed <= ancestors, task.name
        assert task is PREFLIGHT or PREFLIGHT.name in ancestors, task.name
        # No edge the others already imply.
        direct = upstream(task)
        assert not any(name in _ancestors(other) for name in direct for other in direct), task.name


def test_tables_are_the_contracts_and_each_model_is_registered_by_one_task_under_the_name_its_code_uses():
    written = {resource for task in NIGHT for resource in task.writes}
    for table in (r for r in written if isinstance(r, Table)):
        assert TABLES.get(table.name) is table
    # A contract that names a task of the night as its producer is written by it.
    for table in TABLES.values():
        if table.producer in ORDER:
            assert table.producer in {writer.name for writer in writers(table)}, table.name
    models = {r for r in written if isinstance(r, Model)}
    assert all(len(writers(model)) == 1 for model in models)
    # The code names a registered model only through the registry (night.PAAG.name, ...), so a
    # rename cannot leave a stage registering under the old name.
    literal, names = [], {model.name for model in models}
    for path in (PROJECT_ROOT / "osmf_lib").rglob("*.py"):
        if path.name == "night.py":
            continue
        tree = ast.parse(path.read_text())
        # A transformers config's model_type names a class of checkpoint, not a registered model.
        model_types = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign) and _names(n) == ["model_type"]}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in model_types:
                literal.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {node.value}")
    assert not literal


def _names(assign: ast.Assign) -> list[str]:
    return [target.id for target in assign.targets if isinstance(target, ast.Name)]


def _entry(job: Path) -> tuple[ast.Call, str, str]:
    """The job's `main(...)` call and the module and function of the stage it runs."""
    tree = ast.parse(job.read_text())
    modules = {
        a.asname or a.name: f"{n.module}.{a.name}" for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names
    }
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "main")
    stage = call.args[1]  # module.function
    return call, modules[stage.value.id], stage.attr


@cache
def _module(name: str) -> tuple[str, dict[str, ast.FunctionDef], dict[str, tuple[str, str | None]]]:
    """An osmf_lib module's source, its functions, and what each imported name is: (module, None)
    for a module, (module, name) for a name in one."""
    base = PROJECT_ROOT / name.replace(".", "/")
    source = (base / "__init__.py" if base.is_dir() else base.with_suffix(".py")).read_text()
    tree = ast.parse(source)
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("osmf_lib"):
            for alias in node.names:
                path = PROJECT_ROOT / node.module.replace(".", "/") / alias.name
                is_module = path.is_dir() or path.with_suffix(".py").exists()
                target = (f"{node.module}.{alias.name}", None) if is_module else (node.module, alias.name)
                imported[alias.asname or alias.name] = target
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    return source, functions, imported


def _reaches(module: str, function: str, text: str, seen: set) -> bool:
    """Whether osmf_lib's `module.function` holds `text`, or calls (by name, or as an imported
    module's attribute) an osmf_lib function that does. Static, so a method call is not followed."""
    if (module, function) in seen:
        return False
    seen.add((module, function))
    source, functions, imported = _module(module)
    if function not in functions:  # a package re-exporting it
        target = imported.get(function)
        return target is not None and target[1] is not None and _reaches(*target, text, seen)
    node = functions[function]
    if text in ast.get_source_segment(source, node):
        return True
    callees = []
    for call in (n.func for n in ast.walk(node) if isinstance(n, ast.Call)):
        if isinstance(call, ast.Name):
            callees.append((module, call.id) if call.id in functions else imported.get(call.id, (None, None)))
        elif isinstance(call, ast.Attribute) and isinstance(call.value, ast.Name):
            of, name = imported.get(call.value.id, (None, ""))
            callees.append((of, call.attr) if name is None else (None, None))
    return any(_reaches(of, name, text, seen) for of, name in callees if of is not None and name is not None)


def test_every_task_is_its_job_and_the_gpu_tasks_are_the_ones_that_run_torch_on_the_gpu():
    assert {job.stem for job in JOBS.glob("*.py")} == set(ORDER)
    for task in NIGHT:
        call, module, function = _entry(JOBS / f"{task.name}.py")
        assert call.args[0].value == task.name
        # Task to code is mechanical: the function named after the task, in its package's stages.py.
        assert function == task.name
        assert module == "osmf_lib.preflight" if task is PREFLIGHT else re.fullmatch(r"osmf_lib\.\w+\.stages", module)
        sharded = any(k.arg == "sharded" and k.value.value for k in call.keywords)
        assert sharded == (task.shards is not None), task.name
        # A torch stage places its work on `gpu.device`; a Spark task's work is Spark's (a model it
        # grades or embeds with runs on the CPU of the driver or executors).
        assert _reaches(module, function, "gpu.device", set()) == (task.engine == "gpu"), task.name


def test_shards_name_a_setting():
    for task in (t for t in NIGHT if t.shards is not None):
        assert Config().get(task.shards) >= 1


def test_the_readme_and_osmf_night_show_the_registry_table():
    assert markdown_table() in (PROJECT_ROOT / "README.md").read_text()
    printed = CliRunner().invoke(app, ["night"])
    assert (printed.exit_code, printed.output) == (0, markdown_table())


def _imports(path: Path) -> set[str]:
    """Every osmf_lib module `path` imports, `from osmf_lib.x import y` counting as osmf_lib.x.y."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("osmf_lib"):
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_no_package_imports_another_packages_stages():
    """A stage's helpers that another package needs live in a module of its own (osmf_lib.inputs
    for the night's shared inputs), so the packages depend on the platform, not on each other."""
    root = PROJECT_ROOT / "osmf_lib"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "cli.py":  # the command line runs stages by hand
            continue
        package = path.relative_to(root).parts[0]
        for module in _imports(path):
            parts = module.split(".")
            if len(parts) > 2 and parts[2] == "stages" and parts[1] != package:
                offenders.append(f"{path.relative_to(PROJECT_ROOT)} imports {module}")
    assert not offenders


def test_the_layout_check_sees_a_stage_reaching_into_another(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("from osmf_lib.grm.stages import MODEL_NAME\nfrom osmf_lib.gmllm import stages\n")
    assert {"osmf_lib.grm.stages", "osmf_lib.gmllm.stages"} <= _imports(source)
