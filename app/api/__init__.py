"""The HTTP API: app factory, routes, schemas, error mapping, middleware."""

from app.api.app import create_app

__all__ = ["create_app"]
