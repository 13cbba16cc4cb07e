import sys

from sipguard.cli import main

sys.exit(main())
