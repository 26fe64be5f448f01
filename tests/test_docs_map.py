"""The maps stay true (the charter: docs/architecture.md a true, short map; docs/adding-a-family.md true for
families, objectives and data kinds; the README's quick start exactly two commands). Text checks only, against
the tree and the registries: every folder and top-level module of the package is placed on the map, every path
and test the two docs name exists, and the README's commands, presets and recipes are the real ones."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "genmodels"
MAP = (ROOT / "docs" / "architecture.md").read_text()
STEPS = (ROOT / "docs" / "adding-a-family.md").read_text()
README = (ROOT / "README.md").read_text()
PATH = re.compile(r"[\w./<>-]*/[\w.<>-]+\.(?:py|c|h|md|yaml|json|html)\b")  # a path with a folder in it


def _named(text: str, name: str) -> bool:
    """``name`` (a file or folder name) written on its own, not as the tail of a longer name."""
    return re.search(rf"(?<![\w]){re.escape(name)}", text) is not None


@pytest.mark.parametrize("folder", sorted(str(d.relative_to(SRC)) for d in SRC.rglob("*")
                                          if d.is_dir() and d.name != "__pycache__"))
def test_every_folder_of_the_package_is_on_the_map(folder):
    assert _named(MAP, Path(folder).name + "/"), f"docs/architecture.md does not place {folder}/"


@pytest.mark.parametrize("module", sorted(f.name for f in SRC.glob("*.py") if f.name != "__init__.py"))
def test_every_top_level_module_is_on_the_map(module):
    assert _named(MAP, module), f"docs/architecture.md does not place genmodels/{module}"


def _resolves(path: str) -> bool:
    """From the repository, the package or native/ (csrc/…); ``OUT/…``, ``RUN/…``: a placeholder's, not ours."""
    return path.split("/")[0].isupper() or any((base / path).exists() for base in (ROOT, SRC, SRC / "native"))


@pytest.mark.parametrize("doc", ["architecture.md", "adding-a-family.md"])
def test_every_path_the_doc_names_exists(doc):
    text = (ROOT / "docs" / doc).read_text()
    missing = sorted({p for p in PATH.findall(text) if "<" not in p and not _resolves(p)})
    assert not missing, f"docs/{doc} names paths that do not exist: {missing}"


def test_every_test_the_steps_name_exists():
    """``tests/x.py::test_name`` (``test_name…``: a prefix) — the checks adding-a-family.md says will catch a
    mistake must be there to catch it."""
    named = re.findall(r"(tests/[\w/]+\.py)::(\w+)(…)?", STEPS + MAP)
    assert named
    for file, name, prefix in named:
        source = (ROOT / file).read_text()
        assert re.search(rf"def {name}{'' if prefix else '[(]'}", source), f"{file}::{name} does not exist"


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _bash_lines(text: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_the_quick_start_is_two_commands_the_makefile_sets_up_and_runs():
    commands = [line.split("#")[0].strip() for line in _bash_lines(_section(README, "Quick start"))]
    assert commands == ["make train", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "\ntrain: $(STAMP)\n" in makefile and "\ntest: $(STAMP)\n" in makefile  # each sets up first
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_command_and_flag_the_readme_shows_exists():
    from genmodels.cli import build_parser
    commands = build_parser()._subparsers._group_actions[0].choices
    lines = [line.split("  #")[0] for line in _bash_lines(README) if line.startswith("genmodels ")]
    assert len(lines) > 10
    for line in lines:
        name = line.split()[1]
        assert name in commands, f"README shows `genmodels {name}`, which is not a command"
        flags = set(commands[name]._option_string_actions)
        unknown = [f for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", line) if f not in flags]
        assert not unknown, f"README shows `genmodels {name}` with {unknown}, which it does not take"


def test_the_readme_lists_every_preset_and_recipe():
    from genmodels.registry import presets
    listed = set(re.findall(r"`([\w.-]+)`", README.split("\nPresets (", 1)[1].split("\n\n", 1)[0]))
    known = set(presets())
    assert listed == known, f"README presets: missing {known - listed}, extra {listed - known}"
    recipes = set(re.findall(r"`([\w.-]+)`", README.split("Recipes in `configs/`", 1)[1].split("\n\n", 1)[0]))
    missing = {p.stem for p in (ROOT / "configs").glob("*.yaml")} - recipes
    assert not missing, f"README's recipe list lacks {sorted(missing)}"
