"""The two C extensions, declared here because pyproject.toml's table for them is still
experimental in setuptools (it warns on every build); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # The C accelerator for task records (diag/collect/task_origins.py); optional: without
        # a compiler, or on an interpreter it does not know, diag uses its Python path.
        Extension("diag._origins", sources=["diag/_origins.c"], optional=True),
        # What `diag attach` loads into a running process (docs/attach.md); it links against no
        # Python, so one build (abi3) serves every interpreter.
        Extension("diag._attach_boot", sources=["diag/_attach_boot.c"], py_limited_api=True, optional=True),
    ],
)
