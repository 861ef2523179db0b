import sys

from seqjax.cli import main

sys.exit(main())
