"""Command line of the stand-in: ComfyUI's own flags, so a launcher can't tell it apart.

Flags and their meaning follow ComfyUI 0.3.64's `main.py`:
  --listen [IP[,IP...]] (alias --host)  default 127.0.0.1; bare --listen means 0.0.0.0
  --port N                              default 8188
  --base-directory DIR                  root for models/, input/, output/, temp/
  --output-directory DIR (--output-dir)
  --input-directory DIR  (--input-dir)
  --temp-directory DIR   (--temp-dir)   temp files go to DIR/temp, as in ComfyUI
  --extra-model-paths-config FILE...    ComfyUI's extra_model_paths.yaml format; may repeat
  --max-upload-size MB                  default 100
  --enable-cors-header [ORIGIN]         send CORS headers instead of the Host/Origin check
  --verbose [LEVEL]                     log level, DEBUG if given bare
  --disable-metadata                    do not embed the prompt in saved images
  --cpu, --disable-auto-launch, --disable-all-custom-nodes   accepted; nothing to change
Stand-in only:
  --startup-delay SECONDS               wait before binding, like a slow ComfyUI start
Without --base-directory the root is the parent of --output-directory, else a new temp dir.
Any other flag is ignored with a warning, because launchers pass flags meant for a real
ComfyUI (e.g. --front-end-root DIR).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from dataclasses import dataclass

from .files import LEGACY_FOLDER_NAMES, Paths, default_model_dirs

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Config:
    listen: list[str]
    port: int
    paths: Paths
    max_upload_bytes: int
    disable_metadata: bool
    cors_origin: str | None
    log_level: str
    startup_delay: float
    ignored_args: list[str]


def _parser() -> argparse.ArgumentParser:
    # No abbreviations: an unknown flag must never be taken for a prefix of a known one.
    parser = argparse.ArgumentParser(prog="python -m tests.comfy_standin", allow_abbrev=False,
                                     description="ComfyUI stand-in for tests.")
    parser.add_argument("--listen", "--host", nargs="?", const="0.0.0.0", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--base-directory")
    parser.add_argument("--output-directory", "--output-dir")
    parser.add_argument("--input-directory", "--input-dir")
    parser.add_argument("--temp-directory", "--temp-dir")
    parser.add_argument("--extra-model-paths-config", nargs="+", action="append", default=[])
    parser.add_argument("--max-upload-size", type=float, default=100)
    parser.add_argument("--enable-cors-header", nargs="?", const="*")
    parser.add_argument("--verbose", nargs="?", const="DEBUG", default="INFO", choices=LOG_LEVELS)
    for flag in ("--disable-metadata", "--cpu", "--disable-auto-launch", "--disable-all-custom-nodes"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--startup-delay", type=float, default=0.0)
    return parser


def parse_args(argv: list[str]) -> Config:
    args, ignored = _parser().parse_known_args(argv)
    return Config(
        listen=[host.strip() for host in args.listen.split(",") if host.strip()],
        port=args.port,
        paths=_paths(args),
        max_upload_bytes=round(args.max_upload_size * 1024 * 1024),
        disable_metadata=args.disable_metadata,
        cors_origin=args.enable_cors_header,
        log_level=args.verbose,
        startup_delay=args.startup_delay,
        ignored_args=ignored,
    )


def _paths(args: argparse.Namespace) -> Paths:
    if args.base_directory:
        base = os.path.abspath(args.base_directory)
    elif args.output_directory:
        base = os.path.dirname(os.path.abspath(args.output_directory))
    else:
        base = tempfile.mkdtemp(prefix="comfy-standin-")
    model_dirs = default_model_dirs(base)
    for config_file in itertools.chain(*args.extra_model_paths_config):
        _add_extra_model_dirs(config_file, model_dirs)
    return Paths(
        output=os.path.abspath(args.output_directory or os.path.join(base, "output")),
        input=os.path.abspath(args.input_directory or os.path.join(base, "input")),
        temp=os.path.join(os.path.abspath(args.temp_directory or base), "temp"),
        model_dirs=model_dirs,
        custom_nodes=os.path.join(base, "custom_nodes"),
    )


def _add_extra_model_dirs(config_file: str, model_dirs: dict[str, list[str]]) -> None:
    """Read ComfyUI's extra_model_paths.yaml format; like ComfyUI, a bad file stops startup.

    Each top-level section has an optional `base_path` (relative to the file), an optional
    `is_default` (put its folders first), and `folder_name: path` entries where a value may
    hold several paths, one per line.
    """
    import yaml  # only needed when the flag is used

    with open(config_file) as f:
        sections = yaml.safe_load(f) or {}
    here = os.path.dirname(os.path.abspath(config_file))
    for section in sections.values():
        if not isinstance(section, dict):
            continue
        section = dict(section)
        base_path = section.pop("base_path", None)
        if base_path:
            base_path = os.path.join(here, os.path.expandvars(os.path.expanduser(base_path)))
        is_default = section.pop("is_default", False)
        for folder, value in section.items():
            dirs = model_dirs.setdefault(LEGACY_FOLDER_NAMES.get(folder, folder), [])
            for line in str(value).splitlines():
                if line.strip():
                    path = os.path.normpath(os.path.join(base_path or here, line.strip()))
                    if is_default:
                        dirs.insert(0, path)
                    else:
                        dirs.append(path)
