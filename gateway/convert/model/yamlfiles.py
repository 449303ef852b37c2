"""Reading mapping files: YAML that remembers where each mapping came from (file and line), and the
files of a mappings directory with its overlays (a site's directory replaces or adds files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.convert.model.mapping_errors import MappingSpecError
from gateway.errors import ConfigError


class LineDict(dict[str, Any]):
    """A YAML mapping that remembers the file and line it started on, and each key's line."""

    where: str = "?"
    key_where: dict[str, str]

    def at(self, key: str) -> str:
        """ "file:line" of ``key`` (of the mapping when the key is absent)."""
        return self.key_where.get(key, self.where)


#: libyaml's parser when PyYAML has it (several times faster), else the pure Python one.
_SAFE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _loader_for(path: Path) -> type[yaml.SafeLoader]:
    class LineLoader(_SAFE_LOADER):  # type: ignore[misc]
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineDict:
        mapping = LineDict(loader.construct_mapping(node, deep=True))
        mapping.where = f"{path}:{node.start_mark.line + 1}"
        mapping.key_where = {
            str(key.value): f"{path}:{key.start_mark.line + 1}"
            for key, _ in node.value
            if isinstance(key, yaml.ScalarNode)
        }
        return mapping

    LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return LineLoader


def read_yaml(path: Path) -> LineDict:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader_for(path))  # noqa: S506 (SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, LineDict):
        raise ConfigError(f"{path}:1: a mapping file holds a YAML mapping at the top")
    return data


def where(node: Any, fallback: str) -> str:
    return node.where if isinstance(node, LineDict) else fallback


def check_keys(node: dict[str, Any], allowed: set[str], required: set[str], fallback: str) -> None:
    at = where(node, fallback)
    unknown = set(node) - allowed
    if unknown:
        raise MappingSpecError(at, f"unknown key(s) {sorted(unknown)} (known: {sorted(allowed)})")
    missing = required - set(node)
    if missing:
        raise MappingSpecError(at, f"missing key(s) {sorted(missing)}")


def mapping_files(roots: list[Path], folder: str) -> list[Path]:
    """The ``folder/*.yaml`` files of ``roots``, where a file in a later root replaces the file of the
    same name in an earlier one (a site overlay replacing a shipped map), sorted by name."""
    found: dict[str, Path] = {}
    for root in roots:
        for path in (root / folder).glob("*.yaml"):
            found[path.name] = path
    return [found[name] for name in sorted(found)]
