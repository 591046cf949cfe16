"""Register `"conv_basis"` with transformers as soon as transformers loads its attention interface.

Registration needs `transformers.modeling_utils`, which takes seconds to import. Importing `hf_ext`
therefore only installs a post-import hook: the attention and mask functions are registered right
after `transformers.modeling_utils` finishes loading (immediately, if it already has), i.e. before
any model can be built or loaded with `attn_implementation="conv_basis"`.
"""

import importlib.abc
import sys

_TRIGGER = "transformers.modeling_utils"


def _register():
    from . import integration  # noqa: F401  (registers on import)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds `transformers.modeling_utils` with the other finders and registers once it has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TRIGGER:
            return None
        sys.meta_path.remove(self)  # one-shot; also keeps the lookup below from finding this finder
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def install():
    """Register now if transformers' attention interface is loaded, else when it loads."""
    if _TRIGGER in sys.modules:
        _register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


install()
