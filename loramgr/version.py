"""loramgr's own version: one place, importable from anywhere without the package facade."""

__version__ = "0.1.0"
