"""Small helpers for `megengine.hub`: load a file as a module, check a module exists, chdir."""
import contextlib
import importlib.util
import os
import types


def load_module(name: str, path: str) -> types.ModuleType:
    """Execute the Python file ``path`` as a new module called ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ImportError(f"cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_module_exists(module: str) -> bool:
    """Whether ``import module`` would find it (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a bad name
        return False


@contextlib.contextmanager
def cd(target: str):
    """Work in directory ``target`` inside the block, then go back."""
    previous = os.getcwd()
    os.chdir(os.path.expanduser(target))
    try:
        yield
    finally:
        os.chdir(previous)
