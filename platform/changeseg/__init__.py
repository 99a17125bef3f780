"""changeseg: pixel-wise change detection between two images (C-3PO)."""

__version__ = "0.1.0"
