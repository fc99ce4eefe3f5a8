#!/usr/bin/env python3
"""The seeds' `verify_models.py`: the same as `python -m services.models verify [args]`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.models.__main__ import main  # noqa: E402 - the path above makes `services` importable

sys.exit(main(["verify", *sys.argv[1:]]))
