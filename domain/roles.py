"""The roles a member can hold. (Their permission flags come with the HTTP API.)"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    APPROVER = "approver"
    REQUESTER = "requester"
    AUDITOR = "auditor"
    READONLY = "readonly"
