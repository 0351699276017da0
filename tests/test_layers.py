"""The package's shape: one-way layers (no import circle), evaluation independent of training, and run
folder paths made only in layout.py."""
import ast
import re

from sisa.layout import PROJECT_ROOT

SISA = PROJECT_ROOT / "sisa"


def imports() -> dict[str, set[str]]:
    """sisa module -> the sisa modules it imports anywhere in its code (late imports included)."""
    graph = {}
    for path in SISA.glob("*.py"):
        mod = path.stem
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sisa."):
                found.add(node.module.split(".")[1])
        graph[mod] = found - {mod}
    return graph


def closure(graph: dict, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_the_import_graph_has_no_circle():
    graph = imports()
    assert len(graph) > 20 and {"training", "evaluation", "commit", "engine"} <= set(graph)
    for mod in graph:
        assert mod not in closure(graph, mod), f"{mod} imports itself through {sorted(closure(graph, mod))}"


def test_evaluation_stands_on_neither_training_nor_augmentation():
    graph = imports()
    assert not {"training", "augment", "engine", "unlearning"} & closure(graph, "evaluation")
    assert not {"unlearning", "training", "commit"} & closure(graph, "experiment")   # opening a run writes nothing
    assert "training" not in closure(graph, "engine")                               # the core knows no run folder


def test_run_folder_paths_are_made_only_in_layout():
    names = (r"(fold-|shard-|slice-|commit\.json|request\.json|log\.jsonl|metrics\.jsonl|partition\.csv|logits\.npz|"
             r"-mean\.pickle|-fairness\.csv|report\.(md|json)|study\.json|progress\.json)")
    # a path is made by joining (`/ "..."`, `/ f"..."`) or globbing (`.glob("...")`) a string naming such a file
    pattern = re.compile(rf"""(/\s*f?["'][^"']*{names}|glob\(\s*f?["'][^"']*{names})""")
    offenders = []
    for path in [*SISA.glob("*.py"), *PROJECT_ROOT.glob("*.py"), *(PROJECT_ROOT / "benchmarks").glob("*.py")]:
        if path.name == "layout.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and not code.strip().startswith(('"', "'")):   # docstrings may name files
                offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
