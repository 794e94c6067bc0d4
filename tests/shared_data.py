"""Where the tests find the real public data sets: $PREFSCOUT_SHARED_DATA, else ../shared/data."""

import os
from pathlib import Path

SHARED_DATA = Path(
    os.environ.get("PREFSCOUT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
