"""Per-tenant NATS credentials for ``memstream up --auth``.

Each tenant gets a user whose permissions let it publish only on ``mem.<tenant>.>`` and
``memq.<tenant>.>`` (its events and its queries) and on its own lock keys (``<tenant>.*``
of the KV bucket ``MEMLOCK``), and subscribe only on its own reply inbox,
``_INBOX_<tenant>.>`` (the SDK connects with that inbox prefix, so JetStream acks
and query replies come back there). memstream's own processes use a service user that
may do anything. Nothing else can connect.

The credentials live under ``<data dir>/auth/`` (readable by the owner only):
``credentials.json`` (the passwords) and ``auth.conf`` (the server's authorization
block, which the embedded server's config includes). Adding or removing a tenant
rewrites both and tells a running server to reload its config (SIGHUP), so it takes
effect without a restart; a removed tenant's connections are closed by the server.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memstream.schemas.errors import MemstreamError
from memstream.schemas.ids import validate_tenant
from memstream.schemas.subjects import EVENT_PREFIX, LOCK_BUCKET, QUERY_PREFIX, reply_inbox_prefix

__all__ = [
    "SERVICE_USER",
    "AuthError",
    "Credentials",
    "TenantCredentials",
]

SERVICE_USER = "memstream"


class AuthError(MemstreamError):
    code = "bad_request"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


class TenantCredentials:
    """The tenants' and the service's NATS users, kept under ``<data dir>/auth``."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(data_dir) / "auth"
        self.path = self.dir / "credentials.json"
        self.conf_path = self.dir / "auth.conf"

    # --- the store --------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"service": None, "tenants": {}}
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        for path, text in ((self.path, json.dumps(data, indent=2)), (self.conf_path, _conf(data))):
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            tmp.replace(path)

    def service(self) -> Credentials:
        """The service user, created on first use."""
        data = self._load()
        if data.get("service") is None:
            data["service"] = {"user": SERVICE_USER, "password": secrets.token_urlsafe(24)}
            self._save(data)
        elif not self.conf_path.exists():
            self._save(data)
        return Credentials(data["service"]["user"], data["service"]["password"])

    def service_if_any(self) -> Credentials | None:
        data = self._load()
        service = data.get("service")
        return Credentials(service["user"], service["password"]) if service else None

    def tenants(self) -> dict[str, Credentials]:
        return {
            t: Credentials(t, c["password"]) for t, c in sorted(self._load()["tenants"].items())
        }

    def add(self, tenant: str) -> Credentials:
        """Create the tenant's user (or return the one it has)."""
        validate_tenant(tenant)
        if tenant == SERVICE_USER:
            raise AuthError(f"{tenant!r} is the service's user name: choose another tenant id")
        self.service()
        data = self._load()
        if tenant not in data["tenants"]:
            data["tenants"][tenant] = {"password": secrets.token_urlsafe(24)}
            self._save(data)
        return Credentials(tenant, data["tenants"][tenant]["password"])

    def remove(self, tenant: str) -> bool:
        """Delete the tenant's user; whether it had one."""
        data = self._load()
        if data["tenants"].pop(tenant, None) is None:
            return False
        self._save(data)
        return True

    # --- the running server -------------------------------------------------------

    def enforced(self) -> bool:
        """Whether the embedded nats-server's configuration admits users only (it was
        started with ``memstream up --auth``)."""
        conf = self.dir.parent / "nats" / "nats.conf"
        try:
            return "auth/auth.conf" in conf.read_text()
        except OSError:
            return False

    def reload_server(self) -> int | None:
        """Tell the embedded nats-server running on this data dir to reload its config;
        returns its pid, or None when none runs."""
        run = self.dir.parent / "nats" / "run"
        for ports in run.glob("*.ports"):
            try:
                pid = int(ports.stem.rsplit("_", 1)[1])
                os.kill(pid, signal.SIGHUP)
            except (ValueError, IndexError, ProcessLookupError, PermissionError):
                continue
            return pid
        return None


def _conf(data: dict[str, Any]) -> str:
    """The authorization block: the service may do anything; a tenant, its own subjects."""
    users = []
    service = data.get("service")
    if service:
        users.append(
            f"    {{user: {json.dumps(service['user'])}, "
            f"password: {json.dumps(service['password'])}}}"
        )
    for tenant, creds in sorted(data["tenants"].items()):
        publish = [
            f"{EVENT_PREFIX}.{tenant}.>",
            f"{QUERY_PREFIX}.{tenant}.>",
            # Its locks: write its own keys, read them by name, see the bucket exists.
            f"$KV.{LOCK_BUCKET}.{tenant}.>",
            f"$JS.API.DIRECT.GET.KV_{LOCK_BUCKET}.$KV.{LOCK_BUCKET}.{tenant}.>",
            f"$JS.API.STREAM.INFO.KV_{LOCK_BUCKET}",
        ]
        permissions = {
            "publish": {"allow": publish},
            "subscribe": {"allow": [f"{reply_inbox_prefix(tenant)}.>"]},
        }
        users.append(
            f"    {{user: {json.dumps(tenant)}, password: {json.dumps(creds['password'])}, "
            f"permissions: {json.dumps(permissions)}}}"
        )
    return (
        "# Written by memstream (memstream tenant add|remove); do not edit by hand.\n"
        "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"
    )
