"""Adapter placeholder."""
