"""The SQL registry: ORM models (``models``), engine + self-running migrations (``db``) and the
repository API (``api.Registry``) every command goes through."""
