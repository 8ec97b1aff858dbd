"""Persistence: accounts, keys and the hash-chained audit log, on SQLite or PostgreSQL (SQLAlchemy 2 async)."""

from distillshield.store.database import Store, StoreError

__all__ = ["Store", "StoreError"]
