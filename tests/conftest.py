import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Keep test processes to the machine's cores and away from the user's cache.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def mmtc_env(tmp_path_factory):
    env = dict(os.environ)
    env["MMTC_CACHE"] = str(tmp_path_factory.mktemp("mmtc-cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env
