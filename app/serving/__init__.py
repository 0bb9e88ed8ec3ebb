"""Serving: loaded variants, request pipeline, life cycle."""
