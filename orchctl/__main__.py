"""``python -m orchctl``."""

from orchctl.main import main

raise SystemExit(main())
