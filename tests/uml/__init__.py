"""Tests inside user-mode-linux (bench/uml.py): encrypted overlays with real ESP."""
