"""`python -m app.openapi_export [PATH]`: write the API contract as YAML (what `make openapi` runs).

The document comes from the app factory with settings that need neither a database nor a .env,
and is rendered deterministically (FastAPI's key order, no YAML anchors), so the committed file
changes only when the API does; tests/test_contract.py fails when the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from app.config import REPO_ROOT, Settings
from app.main import create_app

CONTRACT_PATH = REPO_ROOT / "specs" / "001-backend-core-api" / "contracts" / "openapi.yaml"
HEADER = "# The API contract, generated from the app by `make openapi` (app/openapi_export.py). Do not edit.\n"


class _Dumper(yaml.SafeDumper):
    # One dict used in several places (a shared header definition) would otherwise be written as
    # `&id001` anchors and `*id001` aliases: valid YAML, but noisy in diffs and for some tools.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Multi-line descriptions as readable `|` blocks (PyYAML falls back to quotes where it must).
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _represent_str)


def contract() -> dict[str, Any]:
    """The OpenAPI document of the app. Nothing connects anywhere: the lifespan never runs."""
    values: dict[str, Any] = {"DATABASE_URL": "sqlite:///:memory:", "JWT_SECRET": "x" * 32}
    return create_app(Settings(_env_file=None, **values)).openapi()


def render(document: dict[str, Any]) -> str:
    """`document` as the YAML text that is committed."""
    return HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def write_contract(argv: list[str], default_path: Path, text: str) -> None:
    """Write a generated contract to argv[0], or to `default_path` (the committed file)."""
    path = Path(argv[0]) if argv else default_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")


def main(argv: list[str]) -> None:
    """Write the contract to argv[0], or to CONTRACT_PATH."""
    write_contract(argv, CONTRACT_PATH, render(contract()))


if __name__ == "__main__":
    main(sys.argv[1:])
