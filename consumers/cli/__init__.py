"""The ``memstream`` command line: a client, one module per command group.

A user's mistake prints one line on stderr and exits with status 2; an outage (NATS not
reachable, the broker failing) prints one line and exits with status 1. Never a traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from memstream.consumers.cli import (
    cluster,
    demo,
    mcp,
    memories,
    operations,
    publishing,
    queries,
    server,
    tenants,
)
from memstream.schemas.errors import MemstreamError

__all__ = ["cli", "main"]


@click.group(
    name="memstream",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="memstream", prog_name="memstream")
def cli() -> None:
    """memstream: event-sourced shared memory for multi-agent AI systems."""


for _command in (
    server.up,
    server.serve,
    cluster.cluster,
    publishing.publish,
    publishing.remember,
    publishing.revise,
    publishing.forget,
    publishing.link,
    queries.search,
    queries.history,
    queries.task,
    queries.context,
    queries.conversation,
    queries.recall,
    queries.stats,
    queries.analytics,
    memories.get,
    memories.list_command,
    memories.revisions,
    memories.links,
    operations.status,
    operations.replay,
    operations.sql_command,
    operations.dlq,
    operations.asyncapi,
    tenants.tenant,
    tenants.audit,
    demo.demo,
    mcp.mcp,
):
    cli.add_command(_command)


def _fail(message: str, status: int) -> NoReturn:
    sys.stderr.write(f"memstream: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(status)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run a command, turning errors into one line."""
    try:
        cli.main(args=argv, prog_name="memstream", standalone_mode=False)
    except click.exceptions.Exit as done:
        raise SystemExit(done.exit_code) from None
    except click.exceptions.NoArgsIsHelpError as err:
        # `memstream`, `memstream dlq`: a group without its command shows its help.
        if err.ctx is not None:
            sys.stdout.write(err.ctx.get_help() + "\n")
        raise SystemExit(2) from None
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.UsageError as err:
        _fail(err.format_message().replace("\n", " "), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except MemstreamError as err:
        message = str(err).replace("\n", " ")
        _fail(message, 2 if err.code == "bad_request" else 1)
    except OSError as err:
        _fail(f"{err.strerror or err} ({getattr(err, 'filename', '') or ''})", 1)
