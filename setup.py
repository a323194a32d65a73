"""The optional native field scanner (healert_webhook/nativescan.py).

Everything else about the package is in pyproject.toml. The extension is optional: where
no C compiler is found, or it fails, setuptools warns and installs the package without it,
and the pure-Python field pass does the work.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("healert_webhook._fastscan", ["healert_webhook/_fastscan.c"],
              optional=True, extra_compile_args=["-O3"]),
])
