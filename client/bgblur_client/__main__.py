"""``python -m bgblur_client`` runs the ``bgblur`` command line."""

from bgblur_client.cli import main

raise SystemExit(main())
