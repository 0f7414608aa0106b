"""pytest plugin (`-p tests.block_torch`): makes torch, and everything that needs it, unimportable, to prove
ralu_edge and ralu_runtime run without it (DESIGN.md import rule)."""

import importlib.abc
import sys

BLOCKED = ("torch", "torchvision", "torchao", "executorch", "diffusers", "transformers", "ralu_export")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} is blocked: the runtime must not import torch or ralu_export")
        return None


sys.meta_path.insert(0, _Blocker())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
