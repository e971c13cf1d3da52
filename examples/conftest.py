"""pytest collects ``examples/`` too (``testpaths`` in ``pyproject.toml``); this
folder is on ``sys.path`` so the tests import ``pos_sync`` as a user would."""
