"""Every Dagster run process imports the code location: it must not pay for the ML libraries
(XGBoost, scikit-learn, SciPy, Optuna, matplotlib cost ~6 s of imports) that only training,
clustering, plotting and serving use."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY = ("xgboost", "sklearn", "scipy", "optuna", "matplotlib", "mlflow", "evidently")


def test_loading_the_definitions_imports_no_ml_library():
    loaded = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            "import sys, geo_busyness.definitions; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=100,
    )
    assert loaded.stdout.split() == []
