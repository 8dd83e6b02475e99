"""Reading the text files users hand us (run configs, search spaces, records): bounded, decoded, shaped.

Every such file goes through here, so each failure has one clear line:
- a binary or non-UTF-8 file, or one larger than any real config (``MAX_TEXT_BYTES``), is refused
  before it is parsed;
- YAML is parsed with PyYAML's safe loader, but its node graph is sized first: ``yaml.safe_load``
  does not bound aliases, and a few hundred bytes of nested aliases (a "billion laughs" file)
  expand to billions of nodes once anything walks them. A document whose expansion exceeds
  ``MAX_YAML_NODES`` is refused before it is constructed;
- ``expect`` checks the shape of one value and names its key.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from derd.errors import UserError

MAX_TEXT_BYTES = 4 << 20  # a run config or space is a few KB; a search record a few hundred KB
MAX_YAML_NODES = 100_000  # after alias expansion; the largest space here has about 300


def read_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of ``path`` (``what``: e.g. "search space"), or one line saying why not."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise UserError(
            f"{what} {path} is {size / 2**20:.1f} MiB, more than any {what} holds "
            f"({MAX_TEXT_BYTES >> 20} MiB at most); pass the right file"
        )
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(
            f"{what} {path} is not a text file (not UTF-8); pass the YAML or JSON file itself"
        ) from None
    except OSError as err:
        raise UserError(f"{what} {path} cannot be read ({err.strerror}); check its permissions") from None


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in ``node`` once every alias is expanded (shared subgraphs counted each time they occur)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_YAML_NODES + 1  # a recursive alias expands forever
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_YAML_NODES + 1)
    return memo[id(node)]


def parse_yaml(text: str, where: str) -> Any:
    """``text`` as YAML (safe loader, aliases bounded); ``where`` names the file or flag in errors."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise UserError(
                f"{where}: its YAML aliases expand to more than {MAX_YAML_NODES:,} values (an alias "
                f"bomb?); write the values out instead of nesting aliases"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise UserError(f"{where}: not valid YAML ({' '.join(str(err).split())[:200]})") from None
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """A YAML file, read with ``read_text`` and parsed with ``parse_yaml``."""
    return parse_yaml(read_text(path, what), str(path))


def read_json(path: str | os.PathLike, what: str) -> Any:
    """A JSON file, read with ``read_text``; malformed JSON is one line naming the file."""
    try:
        return json.loads(read_text(path, what))
    except ValueError as err:
        raise UserError(
            f"{what} {path} is not valid JSON ({err}); it was damaged: restore or remove it"
        ) from None


def expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """``value`` if it is a ``kind`` (a bool is not a number; a number is finite), else one line naming ``where``."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    numeric = any(k in (int, float) for k in kinds)
    ok = isinstance(value, kinds) and not (numeric and isinstance(value, bool))
    if ok and numeric and isinstance(value, float):
        ok = math.isfinite(value)
    if not ok:
        names = " or ".join(
            {
                dict: "a mapping",
                list: "a list",
                str: "a string",
                int: "an integer",
                float: "a finite number",
            }.get(k, k.__name__)
            for k in kinds
        )
        raise UserError(f"{where}: expected {names}, got {type(value).__name__} {str(value)[:60]!r}")
    return value
