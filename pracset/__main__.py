import sys

from pracset.cli import main

sys.exit(main())
