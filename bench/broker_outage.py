"""The issue's 30 s broker outage (CI runs the same test with 8 s).

    python bench/broker_outage.py [seconds]

Runs tests/reliability/test_broker_outage.py with WATTMIX_OUTAGE_S (default 30) and prints its
figures: events produced / archived / dead-lettered, actions, recovery time.
"""

import os
import subprocess
import sys

seconds = sys.argv[1] if len(sys.argv) > 1 else "30"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          "tests/reliability/test_broker_outage.py"], cwd=root,
                         env=dict(os.environ, WATTMIX_OUTAGE_S=seconds)))
