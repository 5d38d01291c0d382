import sys

from purrception.cli import main

sys.exit(main())
