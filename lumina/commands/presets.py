"""`lumina presets`: the 32 preset configs with parameter and FLOP counts."""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--markdown", metavar="PATH", help="write the generated markdown page to PATH")


def run(args: argparse.Namespace) -> int:
    from lumina.presets_table import console_table, markdown, preset_rows
    from lumina.util.files import atomic_write_text

    rows = preset_rows()
    if args.markdown:
        atomic_write_text(args.markdown, markdown(rows))
        print(f"wrote {args.markdown}")
    elif args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(console_table(rows))
    return 0
