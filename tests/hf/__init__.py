"""Hugging Face export and import, and sparse upcycling, through the `lumina` commands."""
