import sys

from sinkviz.cli import main

sys.exit(main())
