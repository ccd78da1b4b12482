"""Settings from the environment, validated once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memstream.consumers.settings import load_settings
from memstream.schemas.errors import ConfigError


def test_defaults() -> None:
    """With nothing set: local NATS, ./.memstream, Qdrant Edge, all-MiniLM-L6-v2."""
    s = load_settings({})
    assert "nats://127.0.0.1:4222" == s.nats_url
    assert "./.memstream" == s.data_dir
    assert "" == s.qdrant_url
    assert "minilm" == s.effective_embedder


def test_environment_is_read_and_flags_win() -> None:
    """Variables are read; a flag given as an override beats the variable."""
    env = {
        "MEMSTREAM_NATS_URL": "nats://10.0.0.1:4222",
        "MEMSTREAM_EMBEDDING_DIM": "384",
        "MEMSTREAM_DATA_DIR": "/var/lib/memstream",
    }
    s = load_settings(env, nats_url="nats://127.0.0.1:5000", data_dir=None)
    assert ("nats://127.0.0.1:5000", 384, "/var/lib/memstream") == (
        s.nats_url,
        s.embedding_dim,
        s.data_dir,
    )


def test_an_openai_key_alone_does_not_change_the_embedder() -> None:
    """Agents' hosts often hold an OpenAI key for their model: memstream embeds offline
    until MEMSTREAM_EMBEDDER chooses openai."""
    assert "minilm" == load_settings({"OPENAI_API_KEY": "sk-x"}).effective_embedder
    env = {"OPENAI_API_KEY": "sk-x", "MEMSTREAM_EMBEDDER": "OpenAI"}
    assert "openai" == load_settings(env).effective_embedder


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"MEMSTREAM_EMBEDDING_DIM": "many"},
            "MEMSTREAM_EMBEDDING_DIM='many' is not valid: expected a whole number from 8 to 65536",
        ),
        (
            {"MEMSTREAM_EMBEDDER": "bert"},
            "MEMSTREAM_EMBEDDER='bert' is not valid: use one of minilm, hash, openai, "
            "sentence-transformers",
        ),
        (
            {"MEMSTREAM_NATS_URL": "localhost:4222"},
            "MEMSTREAM_NATS_URL='localhost:4222' is not valid: expected a URL such as "
            "nats://127.0.0.1:4222, or a comma-separated list of them",
        ),
        (
            {"MEMSTREAM_LOG_FORMAT": "xml"},
            "MEMSTREAM_LOG_FORMAT='xml' is not valid: use console or json",
        ),
        (
            {"MEMSTREAM_INGEST_PRIORITY": "high"},
            "MEMSTREAM_INGEST_PRIORITY='high' is not valid: use low or idle",
        ),
        (
            {"MEMSTREAM_SEARCH_PRIORITY": "max"},
            "MEMSTREAM_SEARCH_PRIORITY='max' is not valid: use usual or high",
        ),
        (
            {"MEMSTREAM_BATCH_SPACING_MS": "-5"},
            "MEMSTREAM_BATCH_SPACING_MS='-5' is not valid: expected a whole number of "
            "milliseconds from 0 to 10000",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], expected: str) -> None:
    """A bad value is one ConfigError naming the variable, the value and the rule."""
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert expected == str(info.value)


def test_bad_flag_is_named_as_a_flag() -> None:
    """A bad override is reported under its flag's name."""
    with pytest.raises(ConfigError, match="^--nats-url='nowhere' is not valid"):
        load_settings({}, nats_url="nowhere")


def test_only_services_tune_the_interpreter(tmp_path: Path) -> None:
    """A one-shot command leaves the GC and the GIL switch interval as they were; up and
    serve (service=True) tune them for throughput."""
    script = (
        "import gc, sys; from memstream.consumers.cli._common import load;"
        "before = (gc.get_threshold(), sys.getswitchinterval()); load();"
        "after_command = (gc.get_threshold(), sys.getswitchinterval()); load(service=True);"
        "print(before == after_command, before != (gc.get_threshold(), sys.getswitchinterval()))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSTREAM_")}
    env["MEMSTREAM_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert "True True" == result.stdout.strip()


def test_choices_are_taken_in_any_case() -> None:
    """MEMSTREAM_LOG_LEVEL=INFO is info, not an error."""
    s = load_settings({"MEMSTREAM_LOG_LEVEL": "INFO", "MEMSTREAM_LOG_FORMAT": "Json"})
    assert ("info", "json") == (s.log_level, s.log_format)


def test_a_list_of_seeds_is_a_nats_url() -> None:
    """A cluster's seeds, comma-separated; a malformed member names the rule."""
    seeds = "nats://10.0.0.1:4222, nats://10.0.0.2:4222,nats://10.0.0.3:4222"
    assert seeds == load_settings({"MEMSTREAM_NATS_URL": seeds}).nats_url
    with pytest.raises(ConfigError, match="comma-separated list"):
        load_settings({"MEMSTREAM_NATS_URL": "nats://10.0.0.1:4222,,oops"})
