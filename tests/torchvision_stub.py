"""Lets timm import without torchvision, for the tests that build timm models as references.

torchvision's PyPI wheels link the CUDA build of libtorch and cannot load beside the CPU torch the
tests pin; timm imports torchvision at start-up for data transforms and FrozenBatchNorm2d, which the
Swin and ResNet models the tests build never use. `install()` answers every `torchvision.*` import
with an empty placeholder module whose attributes are placeholder classes; a real torchvision, when
importable, is used instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


class _PlaceholderType(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(name)


def _placeholder(name: str) -> type:
    return _PlaceholderType(name, (), {"__init__": lambda self, *args, **kwargs: None})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(name)
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _real_torchvision_works() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # a wheel built for another torch fails while registering its operators
        sys.modules.pop("torchvision", None)
        return False
    return True


def install() -> None:
    if "torchvision" in sys.modules or _real_torchvision_works():
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def import_timm():
    """timm, importable whether or not torchvision is."""
    install()
    import timm

    return timm
