"""``python -m threadlock``: the same as the ``threadlock`` console script."""

from threadlock.cli import main

raise SystemExit(main())
