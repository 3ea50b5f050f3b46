"""Interop tests reuse the integration suite's fixtures (devnode, daemon) and harness.

tests/integration/conftest.py is loaded under another module name and its fixtures and
report hook are re-exported here, so both directories can run in one pytest session.
"""

import importlib.util
import sys
from pathlib import Path

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
sys.path.insert(0, str(_INTEGRATION))

_spec = importlib.util.spec_from_file_location("subpool_integration_conftest", _INTEGRATION / "conftest.py")
_integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integration)

pytest_runtest_makereport = _integration.pytest_runtest_makereport
daemon_bin = _integration.daemon_bin
devnode = _integration.devnode
daemon = _integration.daemon
short_dir = _integration.short_dir
