"""The store tests run on SQLite and on PostgreSQL (the queue tests' `store_url`)."""

from tests.queue.conftest import store_url

__all__ = ["store_url"]
