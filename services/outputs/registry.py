"""The output destinations this worker knows, and everything derived from them.

`output_mode` is a destination's `name` or `auto` (inline while the result stays small, the
rest to the configured bucket destination: services/jobs/delivery.py). The payload parser,
OUTPUT_MODE's choices, the CLI's `--output` and field options, the OpenAPI schema and README's
destination table (scripts/sync_readme_tables.py) read this list when they run, so a module
added here shows up in all of them.
"""
from __future__ import annotations

from services.outputs.destination import Destination
from services.outputs.gcs import GcsDestination
from services.outputs.inline import InlineDestination
from services.outputs.s3 import S3Destination

AUTO = "auto"
INLINE = InlineDestination.name

DESTINATIONS: list[type[Destination]] = [InlineDestination, GcsDestination, S3Destination]


def by_name() -> dict[str, type[Destination]]:
    return {cls.name: cls for cls in DESTINATIONS}


def output_modes() -> tuple[str, ...]:
    return (AUTO, *(cls.name for cls in DESTINATIONS))


def bucket_destinations() -> list[type[Destination]]:
    """Where `auto` sends what does not fit inline, in order of preference."""
    return [cls for cls in DESTINATIONS if cls.name != INLINE]


def payload_fields() -> tuple[str, ...]:
    return tuple(f for cls in DESTINATIONS for f in cls.payload_fields)


def secret_fields() -> tuple[str, ...]:
    return tuple(f for cls in DESTINATIONS for f in cls.secret_fields)


def result_fields() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f for cls in DESTINATIONS for f in cls.result_fields))


def payload_schema() -> dict[str, dict]:
    """OpenAPI properties of the destinations' payload fields: strings; credentials may be objects."""
    secret = set(secret_fields())
    return {f: {"type": ["object", "string"], "description": "credentials: only inside an encrypted payload"}
            if f in secret else {"type": "string"} for f in payload_fields()}


def markdown_table() -> str:
    """README's destination table (scripts/sync_readme_tables.py)."""
    rows = ["| `output_mode` | What it does | Payload fields | Result fields | Settings |", "|---|---|---|---|---|"]
    rows.append("| `auto` | Inline (`base64`) while the result stays within `INLINE_MAX_BYTES`, smallest files first; "
                "the rest to the job's bucket destination (the one whose fields it names, else the first one "
                "configured below); with none, kept in `OUTPUT_KEEP_DIR` and reported. | any below | any below | "
                "`INLINE_MAX_BYTES`, `OUTPUT_KEEP_DIR` |")
    for cls in DESTINATIONS:
        secret = set(cls.secret_fields)
        fields = ", ".join(f"`{f}`" + (" (encrypted payload only)" if f in secret else "") for f in cls.payload_fields)
        rows.append(f"| `{cls.name}` | {cls.doc} | {fields or '—'} | {', '.join(f'`{f}`' for f in cls.result_fields)} | "
                    f"{', '.join(f'`{s}`' for s in cls.settings)} |")
    return "\n".join(rows)
