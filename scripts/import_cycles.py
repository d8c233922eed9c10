"""An import-linter contract: no import cycles between modules, counted module by module.

import-linter's own ``acyclic_siblings`` contract looks at the children of each package, each
child with everything below it; it does not see a cycle between a package's ``__init__`` and a
module inside the package. This one builds the graph of modules (``TYPE_CHECKING`` imports
included unless the config excludes them), finds its strongly connected components (Tarjan),
and prints, for each, one shortest cycle through it and every import inside it, with the
lines that import. Registered in pyproject.toml under ``[tool.importlinter] contract_types``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class AcyclicModulesContract(Contract):
    """Options: ``packages``, the packages whose modules must not import each other in a
    circle (every module inside them, the packages' ``__init__`` modules included)."""

    type_name = "acyclic_modules"

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        modules: set[str] = set()
        for package in self.packages:  # type: ignore[attr-defined]
            modules |= {package, *graph.find_descendants(package)}
        imports = {
            module: sorted(graph.find_modules_directly_imported_by(module) & modules)
            for module in sorted(modules)
        }
        cycles = []
        for component in _strongly_connected(imports):
            members = set(component)
            cycle = _shortest_cycle(component[0], imports, members)
            cycles.append(
                {
                    "imports": [
                        (importer, imported, _line_numbers(graph, importer, imported))
                        for importer in component
                        for imported in imports[importer]
                        if imported in members
                    ],
                    "cycle": cycle,
                }
            )
        return ContractCheck(kept=not cycles, metadata={"cycles": cycles})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for found in check.metadata["cycles"]:
            output.print_error(" -> ".join(found["cycle"]))
            output.new_line()
            output.print("Every import inside that circle:")
            output.new_line()
            for importer, imported, line_numbers in found["imports"]:
                output.print(f"- {importer} -> {imported} ({line_numbers})")
            output.new_line()


def _strongly_connected(imports: dict[str, list[str]]) -> list[list[str]]:
    """The components of more than one module (or a module importing itself), sorted;
    Tarjan's algorithm without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in imports:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            module, next_child = work.pop()
            if next_child == 0:
                index[module] = low[module] = len(index)
                stack.append(module)
                on_stack.add(module)
            children = imports[module]
            if next_child < len(children):
                work.append((module, next_child + 1))
                child = children[next_child]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1 or module in imports[module]:
                    components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
    return sorted(components)


def _shortest_cycle(start: str, imports: dict[str, list[str]], within: set[str]) -> list[str]:
    """A shortest path from ``start`` back to ``start`` inside its component (breadth first)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for child in imports[module]:
            if child == start:
                path = [module]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child in within and child not in came_from:
                came_from[child] = module
                queue.append(child)
    raise AssertionError(f"{start} is in no cycle")


def _line_numbers(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    details: list[dict[str, Any]] = graph.get_import_details(importer=importer, imported=imported)
    return ", ".join(f"l.{detail['line_number']}" for detail in details) or "?"
