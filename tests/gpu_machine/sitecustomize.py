"""The lent GPU machine's Python packages, imitated here: put this folder first on PYTHONPATH and
every installed distribution that machine lacks becomes unimportable and invisible to
importlib.metadata (so transformers' `is_*_available` checks answer as they would there), and
glmflash's editable install goes (that machine runs it from the checkout, not from site-packages).

What it has (issue 27), with everything those require; anything else installed here is hidden.
torchvision is not on the list we were given, but the GLM processor cannot load without it, so
scripts/gpu_wheels.sh carries it and scripts/gpu_measure.sh installs it when it is missing. The
wheels that script carries (bitsandbytes, torchao) are hidden: the dry run has none.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from importlib.machinery import PathFinder
from typing import ClassVar

PRESENT = (
    "torch", "torchvision", "transformers", "accelerate", "peft", "tokenizers", "safetensors",
    "huggingface-hub", "numpy", "pillow", "scipy", "scikit-learn", "matplotlib", "psutil", "pytest",
    "httpx", "jinja2", "tqdm", "prometheus-client", "pyyaml", "regex", "requests", "pip", "setuptools",
)  # fmt: skip
PROJECT = {"glmflash"}  # imported from the checkout (the repository root on sys.path)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_level(dist) -> set[str]:
    listed = dist.read_text("top_level.txt")
    if listed:
        return set(listed.split())
    names = set()
    for file in dist.files or []:
        parts = file.parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".data")):
            continue
        if len(parts) > 1:
            names.add(parts[0])
        elif parts[0].endswith((".py", ".so")):
            names.add(parts[0].split(".")[0])
    return names


def hidden() -> tuple[set[str], set[str]]:
    """(top-level module names, distribution names) that the GPU machine does not have."""
    from packaging.requirements import Requirement

    dists: dict = {}
    for dist in metadata.distributions(path=sys.path):  # the first of a name wins, as in an import
        dists.setdefault(_norm(dist.metadata["Name"] or ""), dist)
    keep: set[str] = set()
    todo = [_norm(name) for name in PRESENT]
    while todo:
        name = todo.pop()
        if name in keep or name not in dists:
            continue
        keep.add(name)
        for line in dists[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_norm(requirement.name))
    kept_modules: set[str] = set()
    modules: set[str] = set()
    for name, dist in dists.items():
        (kept_modules if name in keep else modules).update(_top_level(dist))
    modules -= kept_modules | set(sys.stdlib_module_names) | PROJECT
    return modules, set(dists) - keep


class _Hiding:
    """sys.meta_path's PathFinder, blind to the hidden names."""

    modules: ClassVar[set[str]] = set()
    dists: ClassVar[set[str]] = set()

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in cls.modules:
            return None
        return PathFinder.find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        found = PathFinder.find_distributions(*args, **kwargs)
        return (d for d in found if _norm(d.metadata["Name"] or "") not in cls.dists)

    @classmethod
    def invalidate_caches(cls):
        PathFinder.invalidate_caches()


def _editable(item) -> bool:
    """A finder or path hook of a `pip install -e` (setuptools' __editable___*_finder module)."""
    return str(getattr(item, "__module__", type(item).__module__)).startswith("__editable__")


def install() -> None:
    _Hiding.modules, _Hiding.dists = hidden()
    sys.meta_path[:] = [_Hiding if f is PathFinder else f for f in sys.meta_path if not _editable(f)]
    sys.path_hooks[:] = [hook for hook in sys.path_hooks if not _editable(hook)]
    sys.path_importer_cache.clear()
    for name in [m for m in sys.modules if m.partition(".")[0] in _Hiding.modules]:
        del sys.modules[name]  # imported by a .pth file before this ran


install()
