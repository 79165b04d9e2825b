"""The one compiled part of ridl: the per-element look of the stream's identifier dictionary
(``export/_header_look.c``). Optional: where it cannot be built, ridl runs the same look in
Python (slower, same result). Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("export._header_look", ["export/_header_look.c"], optional=True),
    ]
)
