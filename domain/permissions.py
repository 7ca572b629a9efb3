"""The permission catalogue: what each role may do. The ONE place it is defined.

Every HTTP route declares the single permission it needs; a principal holds the
permissions of its member's current role (an API key: the subset it was issued
with, intersected with its member's current role). Anything not granted here is
denied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from domain.errors import ForbiddenError, InvalidError
from domain.roles import Role


class Permission(StrEnum):
    ACCOUNT_SELF = "account:self"
    """Own sessions, password, MFA and recovery codes."""
    MEMBERS_READ = "members:read"
    MEMBERS_INVITE = "members:invite"
    MEMBERS_MANAGE = "members:manage"
    """Change roles, deactivate and reactivate members."""
    TENANT_READ = "tenant:read"
    TENANT_MANAGE = "tenant:manage"
    APIKEYS_ISSUE = "apikeys:issue"
    """Issue, rotate, list and revoke one's own API keys."""
    APIKEYS_MANAGE = "apikeys:manage"
    """List and revoke every member's API keys."""
    LEDGER_READ = "ledger:read"
    """Checkpoints, receipts and proofs of the tenant log."""
    EVENTS_READ = "events:read"
    """The tenant log itself, a page at a time or as a live stream (personal fields
    decrypted unless erased)."""
    REQUESTS_SUBMIT = "requests:submit"
    """Submit access requests (the governance issue)."""
    REQUESTS_APPROVE = "requests:approve"
    """Approve or reject others' access requests; see the requests waiting for one."""
    REQUESTS_READ = "requests:read"
    """Every access request of the tenant with its signed history, the grants, and the
    approval keys' public halves."""
    GRANTS_REVOKE = "grants:revoke"
    """Revoke a grant before it runs out."""
    CONNECTORS_READ = "connectors:read"
    """Connectors (kind, name, non-secret config, credential status and fingerprint)."""
    CONNECTORS_MANAGE = "connectors:manage"
    """Register and change connectors, set and rotate their credentials."""
    AUDIT_INGEST = "audit:ingest"
    """Record another system's audit events in the tenant's log (an API key's scope)."""
    AUDIT_READ = "audit:read"
    """Query and export the audit events other systems recorded."""


P = Permission

_READ = frozenset({P.ACCOUNT_SELF, P.MEMBERS_READ, P.TENANT_READ})

ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.OWNER: frozenset(Permission),
    Role.ADMIN: frozenset(Permission) - {P.REQUESTS_APPROVE},
    Role.APPROVER: _READ
    | {P.APIKEYS_ISSUE, P.REQUESTS_APPROVE, P.REQUESTS_READ, P.GRANTS_REVOKE, P.CONNECTORS_READ},
    Role.REQUESTER: _READ | {P.APIKEYS_ISSUE, P.REQUESTS_SUBMIT, P.CONNECTORS_READ},
    Role.AUDITOR: _READ
    | {
        P.APIKEYS_ISSUE,
        P.LEDGER_READ,
        P.EVENTS_READ,
        P.REQUESTS_READ,
        P.CONNECTORS_READ,
        P.AUDIT_READ,
    },
    Role.READONLY: _READ,
}


class PermissionDeniedError(ForbiddenError):
    pass


def permissions_of(role: Role) -> frozenset[Permission]:
    return ROLE_PERMISSIONS[role]


def parse_scopes(scopes: Iterable[str]) -> frozenset[Permission]:
    chosen: set[Permission] = set()
    for scope in scopes:
        try:
            chosen.add(Permission(scope))
        except ValueError:
            raise InvalidError(f"unknown scope {scope[:64]!r}") from None
    if not chosen:
        raise InvalidError("an API key needs at least one scope")
    return frozenset(chosen)


def check_scopes_within(role: Role, scopes: frozenset[Permission]) -> None:
    """An API key's scopes must be a subset of what its issuer may do."""
    excess = scopes - permissions_of(role)
    if excess:
        raise PermissionDeniedError(f"scopes beyond the issuer's role: {', '.join(sorted(excess))}")


def check_may_assign(actor: Role, old: Role | None, new: Role) -> None:
    """Only an owner makes or unmakes owners; nobody hands out more than they hold."""
    if Role.OWNER in (old, new) and actor is not Role.OWNER:
        raise PermissionDeniedError("only an owner can grant or take the owner role")
    if not permissions_of(new) <= permissions_of(actor):
        raise PermissionDeniedError("a role cannot be granted by someone with fewer rights")
