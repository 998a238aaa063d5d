"""The greylist tests use the limits tests' gateway (mailgate relaying to smtp-sink) and the
queue tests' store on SQLite and PostgreSQL."""

from tests.plugins.limits.conftest import gateway
from tests.queue.conftest import store_url

__all__ = ["gateway", "store_url"]
