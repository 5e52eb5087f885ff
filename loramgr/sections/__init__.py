"""Builds: adapters -> binary sections (per graph or super adapters) + the default adapter,
through a backend (``ort`` reference or ``qairt`` SDK)."""
