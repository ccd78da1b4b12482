"""Fault tests share the other suites' fixtures: a real nats-server per module, freshly
provisioned streams per test, and `memstream up` as a user runs it."""

from tests.e2e.conftest import up
from tests.integration.conftest import nc

__all__ = ["nc", "up"]
