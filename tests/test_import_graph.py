"""The import graph stays untangled (issue #20 d6): no cycle between files (imports inside functions count),
nothing climbs from nn/ or models/ into the floors built on them, and the few one-way rules the layout
relies on (the config base knows no family, the registry imports no family, interop reads files without
io). tests/helpers/import_graph.py builds the graph; ../shared/tools/import_graph.py measures the same."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.import_graph import cycles, edges, upward


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return edges()


def test_the_graph_sees_imports_inside_functions(graph):
    """An import inside a function is an edge too (a graph of top-level imports only would have hidden the
    six cycles of e15f1f6 behind 97 function-level imports)."""
    assert "genmodels.interop.diffusers_unet" in graph["genmodels.io"]  # inside export_diffusers
    assert "genmodels.cli_train" in graph["genmodels.cli"]  # inside build_parser


def _within_training(group: list[str]) -> bool:
    return all(m.startswith("genmodels.training.") for m in group)


def test_no_import_cycles(graph):
    found = [g for g in cycles(graph) if not _within_training(g)]
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(map(", ".join, found))


def test_no_import_cycles_inside_training(graph):
    """training/ on its own (the run's config, recipe, steps, memory, distributed: 6 files in one cycle at
    e15f1f6, untied by the objective-owns-its-run rebuild)."""
    found = [g for g in cycles(graph) if _within_training(g)]
    assert not found, "import cycles inside training/:\n" + "\n".join(map(", ".join, found))


def test_nothing_climbs_from_nn_or_models(graph):
    assert not upward(graph), "imports from nn/ or models/ into the floors above them:\n" + "\n".join(upward(graph))


@pytest.mark.parametrize("module, allowed", [
    ("genmodels.config", {"genmodels.files"}),  # the strict base: knows no family
    ("genmodels.registry", {"genmodels.config"}),  # families register themselves into it
    ("genmodels.files", set()),
])
def test_the_base_modules_import_only_what_is_below_them(graph, module, allowed):
    assert graph[module] <= allowed, f"{module} imports {sorted(graph[module] - allowed)}"


def test_readers_of_files_never_import_io(graph):
    readers = [m for m in graph if m.startswith("genmodels.interop.") or m in (
        "genmodels.data.chat_template", "genmodels.ownership", "genmodels.folders", "genmodels.files")]
    assert not [m for m in readers if "genmodels.io" in graph[m]]


def test_the_native_attention_kernel_registers_itself():
    """nn/attention imports nothing of native/; ``import genmodels`` (which any submodule import runs first)
    registers the native kernel into its table, so ``kernel="native"`` is never silently sdpa."""
    code = ("import genmodels.nn.attention as a, genmodels.native.attention as n; "
            "assert a.KERNELS['native'] is n.native_attention, a.KERNELS; "
            "assert a.kernel_prefers('sdpa', None, None, None) is False")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
