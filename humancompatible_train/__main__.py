"""``python -m humancompatible_train`` runs the command line."""

from .cli import main

raise SystemExit(main())
