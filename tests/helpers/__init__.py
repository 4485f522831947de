"""Shared test helpers, imported as `tests.helpers.*` (pytest puts the repository root on sys.path)."""
