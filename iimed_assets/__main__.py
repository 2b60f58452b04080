import sys

from iimed_assets.cli import main

sys.exit(main())
