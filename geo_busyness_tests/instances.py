"""Dagster instances for tests that only run and read assets in their own process."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator

import dagster as dg


@contextlib.contextmanager
def in_memory_instance() -> Iterator[dg.DagsterInstance]:
    """Runs and events in memory, artifacts in a temp dir removed afterwards.

    For tests that materialize, sense and evaluate automation in-process. A SQLite
    ``instance_for_test`` spends a third of such a test's CPU storing events (one database per
    run, a connection per event): measured on the two-city fixture of
    ``test_multi_city_endpoint.py``, 60 s of CPU against 38 s. The tests about the instance
    itself (the CLI's, the daemon's, PostgreSQL, secrets in its files) keep a real one.
    """
    with (
        tempfile.TemporaryDirectory(prefix="dagster-instance-") as root,
        dg.DagsterInstance.ephemeral(tempdir=root) as instance,
    ):
        yield instance
