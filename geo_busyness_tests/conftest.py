"""Isolation for every test: state goes to temp dirs, and no setting leaks in from the shell.

* Before any fixture runs (``pytest_configure``) and again for each test (autouse fixture), every
  variable of :data:`~geo_busyness.resources.settings.ENVIRONMENT_VARIABLES` (and any other
  ``GEO_BUSYNESS_*``) is cleared, then ``GEO_BUSYNESS_DATA_DIR``, ``DAGSTER_HOME`` and
  ``MLFLOW_TRACKING_URI`` point into a temp dir: the session's for session/module fixtures, the
  test's own for the test.
* Hypothesis keeps no example database and its cache goes to the session's temp dir (it would
  write ``.hypothesis/`` into the checkout).
* On pytest-xdist workers the modules marked ``slow`` are scheduled first, so the longest runs
  (the daemon loop, the stack) overlap the many short tests instead of starting last.
* At the end the checkout is compared with its state at the start: a file a test left there
  fails the run (``--allow-checkout-writes`` turns that off for local debugging).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir

from geo_busyness.resources.settings import (
    DAGSTER_HOME_ENV,
    DATA_DIR_ENV,
    ENVIRONMENT_VARIABLES,
    MLFLOW_TRACKING_ENV,
)

CHECKOUT = Path(__file__).resolve().parents[1]
SETTING_PREFIX = "GEO_BUSYNESS_"
# Written by the tools that run the tests, not by the tests.
TOOL_PATHS = (".venv/", ".pytest_cache/", ".ruff_cache/")

_CHECKOUT_BEFORE = pytest.StashKey[set[str] | None]()
_SESSION_ROOT = pytest.StashKey[Path]()

hypothesis_settings.register_profile("isolated", database=None)
hypothesis_settings.load_profile("isolated")


def isolated_environment(root: Path) -> dict[str, str | None]:
    """The environment a test runs in: every setting unset but the three state locations."""
    names = set(ENVIRONMENT_VARIABLES) | {n for n in os.environ if n.startswith(SETTING_PREFIX)}
    values: dict[str, str | None] = dict.fromkeys(names)
    (root / "dagster_home").mkdir(parents=True, exist_ok=True)
    (root / "mlflow").mkdir(parents=True, exist_ok=True)
    values[DATA_DIR_ENV] = str(root / "data")
    values[DAGSTER_HOME_ENV] = str(root / "dagster_home")
    values[MLFLOW_TRACKING_ENV] = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    return values


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--allow-checkout-writes",
        action="store_true",
        help="do not fail the run when tests leave files in the checkout",
    )


def pytest_configure(config: pytest.Config) -> None:
    root = Path(tempfile.mkdtemp(prefix="geo-busyness-session-"))
    config.stash[_SESSION_ROOT] = root
    set_hypothesis_home_dir(root / "hypothesis")
    for name, value in isolated_environment(root).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    is_worker = hasattr(config, "workerinput")
    if not is_worker and not config.getoption("--allow-checkout-writes"):
        config.stash[_CHECKOUT_BEFORE] = _checkout_files()


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path_factory.mktemp("settings")
    for name, value in isolated_environment(root).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def _checkout_files() -> set[str] | None:
    """Untracked and ignored files of the checkout (None when it is not a git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
            cwd=CHECKOUT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    paths = {line[3:] for line in listed.splitlines() if line[:2] in ("??", "!!")}
    return {
        path for path in paths if not path.startswith(TOOL_PATHS) and "__pycache__/" not in path
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_CHECKOUT_BEFORE, None)
    if before is None:
        return
    after = _checkout_files() or set()
    written = sorted(after - before)
    if written:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "tests wrote into the checkout (they must write only to temp dirs):\n  " + (
            "\n  ".join(written[:50])
        )
        if reporter:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    root = config.stash.get(_SESSION_ROOT, None)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # every worker collects, and sorts, alike
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
