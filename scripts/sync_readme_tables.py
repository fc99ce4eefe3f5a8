"""Rewrite README's generated tables (settings, error codes, metrics, output destinations) from the
code's registries.

`tests/test_readme.py` fails when README and code disagree; run this to bring README up to date.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services import config, errors  # noqa: E402
from services.metrics import catalogue  # noqa: E402
from services.outputs import registry as outputs  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
TABLES = {"settings": config.markdown_table, "errors": errors.markdown_table, "metrics": catalogue.markdown_table,
          "outputs": outputs.markdown_table}


def render(text: str) -> str:
    for name, build in TABLES.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        text, count = pattern.subn(lambda m: m.group(1) + build() + "\n" + m.group(2), text)
        if count != 1:
            raise SystemExit(f"README.md needs exactly one <!-- {name}:start/end --> block")
    return text


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
