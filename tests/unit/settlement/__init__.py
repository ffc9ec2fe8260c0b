"""Unit tests of the pure settlement layer (policies and calculator)."""
