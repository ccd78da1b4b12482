"""``python -m memstream`` and the ``memstream`` command: the CLI, which needs the
``server`` extra; without it, one line says how to install it."""

from __future__ import annotations

import sys

# Top-level modules of the server extra; the CLI imports some of them at start.
_SERVER_MODULES = frozenset(
    {"click", "rich", "structlog", "duckdb", "pyarrow", "numpy", "qdrant_client", "openai"}
)


def main() -> None:
    try:
        from memstream.consumers.cli import main as cli_main
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in _SERVER_MODULES:
            raise
        sys.stderr.write(
            f"memstream: error: the memstream command needs the server extra ({err.name} is "
            "not installed): pip install 'memstream[server]'\n"
        )
        raise SystemExit(2) from None
    cli_main()


if __name__ == "__main__":
    main()
