"""The import graph keeps the layout honest: no cycles, and each layer imports only downwards.

Built with grimp from the source (lazy imports inside functions and `TYPE_CHECKING` imports
count: an import hidden in a function is still a dependency).
"""

from __future__ import annotations

from functools import cache

import grimp
import pytest

PACKAGES = ("moderation", "hitl_dashboard", "jobs")


@cache
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def import_cycles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    for root in sorted(imports):
        if root in index:
            continue
        work = [(root, iter(sorted(imports[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(imports.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    imports = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(imports) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back() -> None:
    imports = {
        module: set(graph().find_modules_directly_imported_by(module)) for module in graph().modules
    }
    assert import_cycles(imports) == []


# (importer, imported): the importer must not reach the imported module by any chain.
FORBIDDEN = [
    # The runtime never depends on the developer tooling (stack, bench, load generator, demo).
    ("moderation.services", "moderation.devtools"),
    ("moderation.classifier", "moderation.devtools"),
    ("moderation.datasets", "moderation.devtools"),
    ("moderation.evaluation", "moderation.devtools"),
    ("moderation.db", "moderation.devtools"),
    ("jobs", "moderation.devtools"),
    # Contracts and the database layer sit below every service and model.
    ("moderation.db", "moderation.services"),
    ("moderation.db", "moderation.classifier"),
    ("moderation.classifier", "moderation.services"),
    # The data may use the lexicon (to filter sources), never a model.
    ("moderation.datasets", "moderation.classifier.fast.model"),
    ("moderation.datasets", "moderation.classifier.fast.training"),
    ("moderation.datasets", "moderation.classifier.cascade"),
    ("moderation.policy", "moderation.classifier"),
    # The review API reads the policy, not the classifier (nor the Agents SDK through it).
    ("moderation.services.api", "moderation.classifier"),
    # The dashboard is a pure API client.
    ("hitl_dashboard", "moderation.db.crud"),
    ("hitl_dashboard", "moderation.db.engine"),
    ("hitl_dashboard", "moderation.services"),
    # The images core is building blocks below the database, the models and the services.
    ("moderation.images", "moderation.db"),
    ("moderation.images", "moderation.services"),
    ("moderation.images", "moderation.classifier"),
    ("moderation.images", "moderation.devtools"),
]


# Deliberate exceptions, each with its reason.
ALLOWED = {
    # On a machine without a GPU image the LoRA job builds its training venv and finds the local
    # base model (the LLM server's GGUF) with the stack's installers; in production both are set.
    ("jobs.lora", "moderation.devtools.stack.train_env"),
}


@cache
def layered_graph() -> grimp.ImportGraph:
    """The graph without the allowed exceptions (grimp graphs cannot be copied: built again)."""
    layered = grimp.build_graph(*PACKAGES, cache_dir=None)
    for importer, imported in ALLOWED:
        layered.remove_import(importer=importer, imported=imported)
    return layered


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN)
def test_layers_import_downwards_only(importer: str, imported: str) -> None:
    chains = layered_graph().find_shortest_chains(
        importer=importer, imported=imported, as_packages=True
    )
    assert not chains, f"{importer} must not import {imported}: " + "; ".join(
        " -> ".join(chain) for chain in sorted(chains)
    )


def test_an_upward_import_is_found() -> None:
    """The layer check can fail: the CLI does import the dev tooling."""
    assert layered_graph().find_shortest_chains(
        importer="moderation.cli", imported="moderation.devtools", as_packages=True
    )
