"""Where a Python finds torch and cifar_spec, found without importing them: compare's first
check of each environment, run in that environment's Python as `python -c` of this file's text
(`source`), so that it must import nothing of ours and nothing but the standard library.

It finds each module by its spec, walking the packages' search locations itself (find_spec of
a submodule would run cifar_spec/__init__.py, which imports torch): importing torch takes
seconds (2.7 s of CPU a probe on a Zen 1), and the workers import it anyway (a torch that is
found but will not import fails their start, naming the error). The last line printed is
"missing NAME" for the first module missing, or "found" after a line of JSON, {module: its
file}: the torch and cifar_spec that this Python's workers must import.
"""

import importlib.machinery
import importlib.util
import json

MODULES = ("torch", "cifar_spec", "cifar_spec.bench.worker")


def source() -> str:
    """This file's text, for `python -c` in another environment."""
    with open(__file__, encoding="utf-8") as file:
        return file.read()


def find(name):
    head, *rest = name.split(".")
    spec = importlib.util.find_spec(head)
    for depth in range(1, len(rest) + 1):
        if spec is None or not spec.submodule_search_locations:
            return None
        full = ".".join([head, *rest[:depth]])
        spec = importlib.machinery.PathFinder.find_spec(full, spec.submodule_search_locations)
    return spec


def report() -> None:
    files = {}
    for name in MODULES:
        try:
            spec = find(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            print("missing", name)
            return
        files[name] = spec.origin
    print(json.dumps(files))
    print("found")


if __name__ == "__main__":
    report()
