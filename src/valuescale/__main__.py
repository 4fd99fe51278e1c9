"""``valuescale COMMAND ...`` (the console script) and ``python -m valuescale COMMAND ...``:
``status`` (``python -m valuescale.status``) and ``train`` (``python -m valuescale.train``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = {
    "status": "where a study stands: every cell's state, steps, returns, rate, ETA",
    "train": "train the seeds of one cell (the workflow's train jobs run this)",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        usage = (
            "usage: valuescale {"
            + ",".join(COMMANDS)
            + "} ...\n\n"
            + "\n".join(f"  {name:8s}{text}" for name, text in COMMANDS.items())
        )
        if args and args[0] not in ("-h", "--help"):
            print(f"{usage}\n\nvaluescale: error: unknown command {args[0]!r}", file=sys.stderr)
            return 2
        print(f"{usage}\n\n`valuescale COMMAND --help` describes a command.")
        return 0 if args else 2
    if args[0] == "status":
        from valuescale.status import main as command
    else:
        from valuescale.train import main as command
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
