"""Tests inside user-mode-linux (tests/support/uml.py): encrypted overlays with real ESP."""
