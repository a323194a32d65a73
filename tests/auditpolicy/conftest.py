"""Fixtures of the audit policy tests."""

from __future__ import annotations

import pytest
from policy_needs import GITOPS_CONTROLLERS, enabled_needs

from healert_webhook.auditpolicy.needs import Needs


@pytest.fixture
def shipped_needs() -> Needs:
    """The enabled rules' needs, with the GitOps controllers as known automation."""
    return Needs(enabled_needs(), automation=GITOPS_CONTROLLERS)
