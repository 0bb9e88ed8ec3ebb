"""Inference backends behind one interface: torch (CPU/CUDA), LiteRT (int8 TF Lite)."""

from app.inference.base import Backend
from app.inference.select import create_backend

__all__ = ["Backend", "create_backend"]
