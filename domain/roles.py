"""The roles a member can hold; what each may do is in domain/permissions.py."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    APPROVER = "approver"
    REQUESTER = "requester"
    AUDITOR = "auditor"
    READONLY = "readonly"
