"""CHATCORE_PRICES: the prices file (TOML or JSON), read once at start-up into ``chatcore.usage.Prices``."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from chatcore.usage import Prices


def load_prices(path: str | Path) -> Prices:
    """The prices in the file at ``path``: a JSON object (the text starts with ``{``) or TOML, one table per model.

    Raises ValueError saying what is wrong (unreadable, not TOML or JSON, a bad table); never a price it guessed.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error.__class__.__name__}") from None
    data: Any
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text, parse_float=str, parse_int=str)
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    else:
        try:
            data = tomllib.loads(text, parse_float=str)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path} is not valid TOML: {error}") from None
    return Prices.from_mapping(data)
