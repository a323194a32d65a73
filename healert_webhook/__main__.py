"""`python -m healert_webhook` runs the command line."""

import sys

from healert_webhook.cli import main

sys.exit(main())
