"""MkDocs hooks: the reference pages written from the code, and the benchmark charts.

A page holds a marker such as ``<!-- generated: cli -->``; the hook replaces it with
markdown built from what it documents (the click commands, the AsyncAPI document that
``schemas/`` generates), so the reference cannot drift from the code. The charts are
drawn from the benchmarks' own result files (``benchmarks/results/*.json``) when the
site is built; nothing generated is kept in ``docs/``.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
_MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")


# The CLI, from its click commands


def _commands(group: click.Group, prefix: str) -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _value(param: click.Option) -> str:
    """What an option takes, in words a table cell can hold."""
    kind = param.type
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(f"`{c}`" for c in kind.choices)
    if isinstance(kind, click.IntRange | click.FloatRange):
        low = "" if kind.min is None else f"{kind.min:,}"
        high = "" if kind.max is None else f"{kind.max:,}"
        if low and high:
            return f"a number from {low} to {high}"
        return f"a number from {low}" if low else f"a number up to {high}" if high else "a number"
    return f"`{kind.name.upper()}`"


def _option_row(param: click.Option) -> str:
    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    takes = "" if param.is_flag else f" {_value(param)}"
    default = param.default
    if param.required:
        shown = "required"
    elif param.is_flag or not isinstance(default, int | float | str) or default == "":
        shown = ""
    else:
        shown = f"`{default}`"
    many = " (repeatable)" if param.multiple else ""
    return f"| {names}{takes}{many} | {shown} | {_cell(param.help or '')} |"


def cli_reference() -> str:
    from memstream.consumers.cli import cli

    out: list[str] = []
    for path, command in _commands(cli, "memstream"):
        ctx = click.Context(command, info_name=path)
        usage = " ".join(command.collect_usage_pieces(ctx))
        out += [f"## `{path.strip()}`", ""]
        out += [inspect.cleandoc(command.help or "").replace("\b\n", ""), ""]
        if isinstance(command, click.Group):
            out += [
                "Commands: " + ", ".join(f"`{n}`" for n in command.commands) + ".",
                "",
            ]
            continue
        out += ["```text", f"{path} {usage}", "```", ""]
        options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
        if options:
            out += ["| option | default | what it does |", "|---|---|---|"]
            out += [_option_row(p) for p in options]
            out += [""]
    return "\n".join(out)


# The wire contract, from the AsyncAPI document


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        kinds = [_type(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(kinds) + " or null"
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if schema.get("format") == "date-time":
        return "time (RFC 3339)"
    return str(kind)


def _rule(schema: dict[str, Any]) -> str:
    rules = []
    for key, text in (
        ("minLength", "≥ {} chars"),
        ("maxLength", "≤ {} chars"),
        ("minimum", "≥ {}"),
        ("maximum", "≤ {}"),
        ("maxItems", "≤ {} items"),
    ):
        for s in [schema, *schema.get("anyOf", [])]:
            if key in s:
                rules.append(text.format(s[key]))
    return ", ".join(rules)


def _fields(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", ()))
    rows = ["| field | type | required | default | rule |", "|---|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        yes = "yes" if name in required else ""
        rows.append(f"| `{name}` | {_type(prop)} | {yes} | {default} | {_rule(prop)} |")
    return rows


def _reply_result(message: dict[str, Any]) -> str:
    """The schema name of a reply's ``result`` (the ``ok: true`` side of its envelope)."""
    ok = message["payload"]["oneOf"][0]
    return str(ok["properties"]["result"]["$ref"])


def wire_reference() -> str:
    from memstream.schemas.asyncapi import asyncapi_document

    doc = asyncapi_document()
    schemas = doc["components"]["schemas"]
    messages = doc["components"]["messages"]
    out = ["### Events", ""]
    for key, channel in doc["channels"].items():
        if not key.startswith("event."):
            continue
        (name,) = channel["messages"]
        out += [f"#### {name}", "", f"Subject `{channel['address']}`.", ""]
        out += [*_fields(schemas[name]), ""]
    out += ["### Queries", ""]
    for key, channel in doc["channels"].items():
        if not key.startswith("query.") or key.endswith(".reply"):
            continue
        (name,) = channel["messages"]
        result = _type({"$ref": _reply_result(messages[name.replace("Request", "Reply")])})
        out += [
            f"#### {name}",
            "",
            f"Subject `{channel['address']}`; the reply's `result` is a {result}.",
            "",
            *_fields(schemas[name]),
            "",
        ]
    out += ["### Replies and their parts", ""]
    asked = {n for c in doc["channels"].values() for n in c["messages"]}
    for name, schema in schemas.items():
        if name not in asked:
            out += [f"#### {name}", "", *_fields(schema), ""]
    return "\n".join(out)


GENERATED: dict[str, Callable[[], str]] = {"cli": cli_reference, "wire": wire_reference}


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return _MARKER.sub(lambda m: GENERATED[m.group(1)](), markdown)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    from benchmarks.charts import draw

    for name, svg in draw(ROOT / "benchmarks" / "results").items():
        files.append(File.generated(config, f"explanation/charts/{name}", content=svg))
    return files
