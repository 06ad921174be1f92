"""The engines eventlog runs on, one module each behind ``base.Backend`` (``database.py`` is
the way in)."""
