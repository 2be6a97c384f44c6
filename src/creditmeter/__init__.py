"""creditmeter: an open-source credits engine for AI platforms."""

__version__ = "0.1.0"
