import sys

from wattmix.cli import main

sys.exit(main())
