"""Import CompressAI's codec building blocks on machines where `import compressai` fails.

CompressAI's package __init__ imports all of its sub-packages, and two of them (training
datasets and data transforms) import torchvision and torch_geometric. PyPI has no CPU build
of torchvision: its CUDA wheel fails to load next to a CPU torch, and installing it would
pull a CUDA torch. nzip uses only the codec parts (entropy models, layers, the hyperprior
models and the rANS coder), which need nothing but torch, numpy and scipy. So nzip installs
compressai without its dependencies (`pip install --no-deps compressai==1.2.8`, see the
README) and, when the plain import fails, loads those parts from the installed package
without running the package's __init__: no stand-in modules, no patched files.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

from ..errors import NzipError

INSTALL_HINT = ("the learned codecs need CompressAI: pip install scipy && "
                "pip install --no-deps compressai==1.2.8 (see the README)")

_loaded: types.ModuleType | None = None


def load() -> types.ModuleType:
    """The `compressai` package with .entropy_models, .layers, .models.google, .models.vbr
    and .ans importable: the real package when it imports, else its codec parts alone."""
    global _loaded
    if _loaded is not None:
        return _loaded
    spec = importlib.util.find_spec("compressai")
    if spec is None or not spec.submodule_search_locations:
        raise NzipError(INSTALL_HINT)
    try:
        import compressai  # a machine with a working torchvision gets the whole package
    except Exception:  # noqa: BLE001 (torchvision fails with RuntimeError, not ImportError)
        for name in [m for m in sys.modules if m == "compressai" or m.startswith("compressai.")]:
            del sys.modules[name]  # drop what the failed import left half-initialised
        compressai = _load_codec_parts(spec.submodule_search_locations[0])
    for name in ("compressai.models.google", "compressai.models.vbr", "compressai.ans"):
        importlib.import_module(name)
    _loaded = compressai
    return compressai


def _package(name: str, path: str) -> types.ModuleType:
    """An importable package module whose __init__ is not run."""
    module = types.ModuleType(name)
    module.__path__ = [path]
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__spec__.submodule_search_locations = [path]
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def _load_codec_parts(root: str) -> types.ModuleType:
    compressai = _package("compressai", root)
    # the package __init__ also defines the entropy-coder selection that the entropy models
    # call; run exactly those statements of it (everything but its sub-package imports)
    with open(os.path.join(root, "__init__.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    tree.body = [node for node in tree.body
                 if not (isinstance(node, ast.ImportFrom) and node.module == "compressai")]
    exec(compile(tree, os.path.join(root, "__init__.py"), "exec"), compressai.__dict__)  # noqa: S102
    # the registry's __init__ imports the transforms registry (torchvision); the models only
    # need its torch part
    registry = _package("compressai.registry", os.path.join(root, "registry"))
    torch_registry = importlib.import_module("compressai.registry.torch")
    for name in dir(torch_registry):
        if name.isupper() or name.startswith("register_"):
            setattr(registry, name, getattr(torch_registry, name))
    # models/__init__ imports the point-cloud models (torch_geometric)
    _package("compressai.models", os.path.join(root, "models"))
    return compressai
