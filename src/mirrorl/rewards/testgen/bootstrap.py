"""The start of a sandboxed generator: CYaRon imported from memory, a seed, then the generator.

This file's text becomes the sandbox's main.py (generate.py appends the call `main(...)`), and
runs under the sandbox's `python3 -I` (no site-packages, no PYTHONPATH, no host paths): the
modules of CYaRon and its pure-Python dependency xeger travel inside the program as source text
and are imported from memory by `SourceImporter`. The seed arrives on stdin, as a test input
does; `main` seeds `random` with it (CYaRon draws from `random`), puts it in sys.argv[1] and
runs the generator as __main__, whose stdout is one test input.

Stdlib only, Python >= 3.8: it runs under the sandbox's python3, never imports mirrorl.
"""

import random
import sys
from importlib.machinery import ModuleSpec


class SourceImporter:
    """A meta-path finder and loader over {module name: (is_package, source)}."""

    def __init__(self, modules):
        self.modules = modules

    def find_spec(self, name, path=None, target=None):
        if name not in self.modules:
            return None
        return ModuleSpec(name, self, origin=name.replace(".", "/") + ".py", is_package=self.modules[name][0])

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        spec = module.__spec__
        exec(compile(self.modules[spec.name][1], spec.origin, "exec"), module.__dict__)


def main(modules, generator):
    sys.meta_path.insert(0, SourceImporter(modules))
    seed = int(sys.stdin.readline())
    random.seed(seed)
    sys.argv = ["generator.py", str(seed)]
    exec(compile(generator, "generator.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
