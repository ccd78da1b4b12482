"""Per-tenant NATS credentials for ``memstream up --auth``.

Each tenant gets a user whose permissions let it publish only on ``mem.<tenant>.>`` and
``memq.<tenant>.>`` (its events and its queries) and on its own lock keys (``<tenant>.*``
of the KV bucket ``MEMLOCK``), and subscribe only on its own reply inbox,
``_INBOX_<tenant>.>`` (the SDK connects with that inbox prefix, so JetStream acks
and query replies come back there). memstream's own processes use a service user that
may do anything. Nothing else can connect.

A tenant also has users of its own (``memstream tenant user add``), named
``<user>@<tenant>`` on NATS, each with a role the server enforces (:data:`ROLES`):

- ``reader``: queries (``memq.<tenant>.>``, watch included) and reading locks;
- ``writer``: a reader that also publishes events and takes locks;
- ``admin``: a writer that also asks the tenant's own admin ops (``memadm.*.<tenant>``:
  purge, audit).

A user receives only under its own inbox, ``_INBOX_<tenant>.u.<user>``, so the query
worker knows who asked from the reply subject (``schemas.subjects.asker``). The tenant's
own user is a writer.

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
from typing import Any, Final, Literal

from memstream.schemas.errors import MemstreamError
from memstream.schemas.ids import validate_tenant
from memstream.schemas.subjects import (
    ADMIN_PREFIX,
    EVENT_PREFIX,
    LOCK_BUCKET,
    QUERY_PREFIX,
    nats_user,
    reply_inbox_prefix,
    split_nats_user,
    user_name,
)

__all__ = [
    "ROLES",
    "SERVICE_USER",
    "AuthError",
    "Credentials",
    "TenantCredentials",
    "User",
    "nats_user",
    "split_nats_user",
]

SERVICE_USER = "memstream"
# What each role may do, as the server's permissions: each role adds to the one before.
ROLES: Final = ("reader", "writer", "admin")
Role = Literal["reader", "writer", "admin"]


class AuthError(MemstreamError):
    code = "bad_request"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


@dataclass(frozen=True)
class User:
    """A user within a tenant: its name there, its role, and its NATS credentials."""

    tenant: str
    name: str
    role: Role
    password: str

    @property
    def credentials(self) -> Credentials:
        return Credentials(nats_user(self.tenant, self.name), self.password)

    @property
    def inbox_prefix(self) -> str:
        return reply_inbox_prefix(self.tenant, self.name)


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

    # --- users within a tenant ------------------------------------------------------

    def _tenant(self, data: dict[str, Any], tenant: str) -> dict[str, Any]:
        entry: dict[str, Any] | None = data["tenants"].get(validate_tenant(tenant))
        if entry is None:
            raise AuthError(
                f"tenant {tenant!r} has no NATS user: add it first with 'memstream tenant add "
                f"{tenant}'"
            )
        return entry

    def users(self, tenant: str) -> list[User]:
        """The tenant's users, by name."""
        entry = self._tenant(self._load(), tenant)
        return [
            User(tenant, name, u["role"], u["password"])
            for name, u in sorted(entry.get("users", {}).items())
        ]

    def add_user(self, tenant: str, name: str, role: str) -> User:
        """Create a user within ``tenant`` with ``role``; a user of that name is an error."""
        user_name(name)
        if role not in ROLES:
            raise AuthError(f"role {role!r} is not one of {', '.join(ROLES)}")
        data = self._load()
        users = self._tenant(data, tenant).setdefault("users", {})
        if name in users:
            raise AuthError(
                f"tenant {tenant} already has a user {name!r}: remove it first, or rotate its "
                "password with 'memstream tenant user rotate'"
            )
        users[name] = {"role": role, "password": secrets.token_urlsafe(24)}
        self._save(data)
        return User(tenant, name, role, users[name]["password"])  # type: ignore[arg-type]

    def rotate_user(self, tenant: str, name: str) -> User:
        """Give the user a new password; the old one stops working at the server's reload."""
        data = self._load()
        users = self._tenant(data, tenant).get("users", {})
        if name not in users:
            raise AuthError(
                f"tenant {tenant} has no user {name!r} (see 'memstream tenant user list')"
            )
        users[name]["password"] = secrets.token_urlsafe(24)
        self._save(data)
        return User(tenant, name, users[name]["role"], users[name]["password"])

    def remove_user(self, tenant: str, name: str) -> bool:
        """Delete the user; whether it existed."""
        data = self._load()
        if self._tenant(data, tenant).get("users", {}).pop(name, None) is None:
            return False
        self._save(data)
        return True

    def remove(self, tenant: str) -> bool:
        """Delete the tenant's user, and its users within; whether it had one."""
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


def _permissions(tenant: str, role: str, inbox: str) -> dict[str, Any]:
    """What ``role`` of ``tenant`` may publish, and where it may receive (``inbox``)."""
    publish = [
        f"{QUERY_PREFIX}.{tenant}.>",
        # Reading its locks: by name, and seeing the bucket exists.
        f"$JS.API.DIRECT.GET.KV_{LOCK_BUCKET}.$KV.{LOCK_BUCKET}.{tenant}.>",
        f"$JS.API.STREAM.INFO.KV_{LOCK_BUCKET}",
    ]
    if role in ("writer", "admin"):
        publish += [f"{EVENT_PREFIX}.{tenant}.>", f"$KV.{LOCK_BUCKET}.{tenant}.>"]
    if role == "admin":
        publish.append(f"{ADMIN_PREFIX}.*.{tenant}")
    return {
        # A tenant's quota is the operator's to set: no user of the tenant publishes it.
        "publish": {"allow": publish, "deny": [f"{EVENT_PREFIX}.{tenant}.quota.>"]},
        "subscribe": {"allow": [f"{inbox}.>"]},
    }


def _user_line(user: str, password: str, permissions: dict[str, Any] | None = None) -> str:
    line = f"    {{user: {json.dumps(user)}, password: {json.dumps(password)}"
    return line + (f", permissions: {json.dumps(permissions)}}}" if permissions else "}")


def _conf(data: dict[str, Any]) -> str:
    """The authorization block: the service may do anything; a tenant, its own subjects;
    a user within a tenant, what its role allows."""
    users = []
    service = data.get("service")
    if service:
        users.append(_user_line(service["user"], service["password"]))
    for tenant, entry in sorted(data["tenants"].items()):
        # The tenant's own user is a writer that receives under the whole tenant's inbox.
        own = _permissions(tenant, "writer", reply_inbox_prefix(tenant))
        users.append(_user_line(tenant, entry["password"], own))
        for name, user in sorted(entry.get("users", {}).items()):
            allowed = _permissions(tenant, user["role"], reply_inbox_prefix(tenant, name))
            users.append(_user_line(nats_user(tenant, name), user["password"], allowed))
    return (
        "# Written by memstream (memstream tenant add|remove|user); do not edit by hand.\n"
        "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"
    )
