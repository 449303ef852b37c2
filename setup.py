"""Packaging that pyproject.toml cannot say: the shipped mappings live at the top of the
repository (mappings/) and inside the wheel as the package data of ``gateway.mappings``, where
gateway.convert.runtime.engine.default_mappings_dir finds them. Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup

#: The operator console's templates and static files (htmx vendored, with its licence): data folders.
CONSOLE_DATA = {"gateway.api.console.templates": ["*.html"], "gateway.api.console.static": ["*"]}
MAPPINGS = ["gateway.mappings", *(f"gateway.mappings.{name}" for name in find_namespace_packages(where="mappings"))]

setup(
    packages=[*find_packages(include=["gateway", "gateway.*"]), *CONSOLE_DATA, *MAPPINGS],
    package_dir={"gateway.mappings": "mappings"},
    package_data={
        **{name: ["*.yaml"] for name in MAPPINGS},
        "gateway.mappings": ["*.yaml", "mapping.schema.json"],
        "gateway.db.migrations": ["script.py.mako"],
        **CONSOLE_DATA,
    },
)
