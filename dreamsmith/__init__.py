"""dreamsmith: text (and image, mesh, photo) to game-ready 3D assets by score distillation."""

__version__ = "0.1.0"
