"""`python -m services <command>`: the appliance's command line.

run       run one workflow (services/cli.py)
versions  install, list, verify and remove version environments (services/versions/cli.py)
settings  print the settings in effect, or README's table with --markdown
errors    print README's error reference with --markdown
"""
from __future__ import annotations

import argparse
import json
import sys

from services import config, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    from services.cli import add_run_parser, run_command
    from services.versions import cli as versions_cli

    add_run_parser(sub)
    versions_cli.add_parser(sub)
    show = sub.add_parser("settings", help="print the settings in effect (secrets masked)")
    show.add_argument("--markdown", action="store_true", help="print README's variable table instead")
    errs = sub.add_parser("errors", help="print the error reference")
    errs.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "settings" and args.markdown:
        print(config.markdown_table())
        return 0
    if args.command == "errors":
        print(errors.markdown_table())
        return 0
    settings = config.load_or_exit()
    if args.command == "settings":
        print(json.dumps(settings.public_dict(), indent=2))
        return 0
    if args.command == "versions":
        return versions_cli.run(args, settings)
    return run_command(args, settings)


if __name__ == "__main__":
    sys.exit(main())
