"""Whether a Docker engine runs here, for the tests that need a Qdrant server container."""

from __future__ import annotations

import functools


@functools.cache
def docker_unavailable() -> str | None:
    """None when a Docker engine answers; else the reason, for a skip."""
    try:
        import docker

        docker.from_env().ping()
    except Exception as err:
        return f"no Docker engine to run a Qdrant server container ({type(err).__name__})"
    return None
