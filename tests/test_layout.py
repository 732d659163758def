"""Where code lives: no import circle inside the package (lazy imports included), no tab imports
another tab, no gradio outside ui/, and no module longer than a sitting's reading."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ctxdistill"
MAX_LINES = 600
TABS = ("constitution", "preview", "data", "samples", "distill", "compare")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every ctxdistill module ``path`` imports, at the top or inside a function."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ctxdistill")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            if not base.startswith("ctxdistill"):
                continue
            for a in node.names:  # "from . import curate" names a module; "from .x import f" names x
                candidate = f"{base}.{a.name}"
                out.add(candidate if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).is_file() else base)
    return out - {module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_no_tab_imports_another_tab():
    for tab in TABS:
        other = {f"ctxdistill.ui.{t}" for t in TABS if t != tab}
        assert not imports(PACKAGE / "ui" / f"{tab}.py") & other, tab


def test_gradio_only_in_ui():
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(n == "gradio" or n.startswith("gradio.") for n in names), path.name


def test_modules_are_short():
    """No exception by docstring: a module that outgrows a sitting is split along a concern."""
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
