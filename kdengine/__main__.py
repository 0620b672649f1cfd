import sys

from kdengine.cli import main

sys.exit(main())
