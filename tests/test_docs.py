"""The README and docs/ stay true to the code: every ``ctxdistill`` command in their shell blocks
parses with the real command-line parser (the flags exist; no model loads), the README stays a
landing page, and every link between the pages leads somewhere."""

import re
import shlex
from pathlib import Path

import pytest

from ctxdistill.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|console)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def commands(page: Path) -> list[list[str]]:
    """The argv of each ``ctxdistill …`` line (continuations joined, comments dropped) of a page's
    shell blocks; ``accelerate launch … -m ctxdistill.cli …`` counts as the command after the module."""
    out = []
    for block in SHELL_BLOCK.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["ctxdistill"]:
                out.append(words[1:])
            elif "ctxdistill.cli" in words:
                out.append(words[words.index("ctxdistill.cli") + 1 :])
    return out


DOCUMENTED = [(page.relative_to(REPO).as_posix(), argv) for page in PAGES for argv in commands(page)]


def test_the_docs_show_commands():
    assert len(DOCUMENTED) >= 30
    names = {argv[0] for _, argv in DOCUMENTED}
    assert names >= {"serve", "preview", "import", "generate", "revise", "export", "train", "eval", "doctor"}


@pytest.mark.parametrize("page,argv", DOCUMENTED, ids=[f"{p}: {' '.join(a)[:60]}" for p, a in DOCUMENTED])
def test_documented_command_parses(page, argv, capsys):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help prints and exits 0; a flag that does not exist exits 2
        assert exc.code == 0, f"{page}: `ctxdistill {' '.join(argv)}` does not parse: {capsys.readouterr().err}"
    else:
        assert args.command == argv[0]


def test_a_wrong_flag_is_caught():
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--constitution", "1", "--no-such-flag"])
    assert exc.value.code == 2


def test_readme_is_a_landing_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 120
    front = text.split("---\n")[1]  # the Hugging Face Spaces front matter comes first
    assert text.startswith("---\n") and "sdk: gradio" in front and "app_file: app.py" in front
    assert "make run" in text and "make test" in text
    targets = [t for t in LINK.findall(text) if "://" not in t]
    assert targets and all(t.startswith("docs/") for t in targets), targets


def anchors(page: Path) -> set[str]:
    """GitHub's ids for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_lead_somewhere(page):
    for target in LINK.findall(page.read_text()):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.is_file(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: {target}: no such heading"


def test_the_code_map_names_every_module():
    code_map = (REPO / "docs" / "architecture.md").read_text()
    package = REPO / "ctxdistill"
    unnamed = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name != "__init__.py" and f"`{path.name}`" not in code_map and f"`ui/{path.name}`" not in code_map
    ]
    assert not unnamed, f"docs/architecture.md's code map does not name {unnamed}"
