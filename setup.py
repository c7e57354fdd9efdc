"""Build step for difflab's one compiled part, the optimizer's normal-noise kernel
(src/difflab/optim/_normal.c). The extension is optional: without a C compiler the package
installs anyway and ``difflab.optim.normal`` uses its NumPy implementation of the same stream."""
import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-math-errno"]
setup(ext_modules=[Extension("difflab.optim._normal", ["src/difflab/optim/_normal.c"],
                             extra_compile_args=flags, optional=True)])
