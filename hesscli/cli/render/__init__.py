"""Renderers: result objects → Rich tables or JSON. No arithmetic."""
