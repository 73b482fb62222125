"""Helpers shared by the test tiers (unit, integration, e2e) and nothing else.

Owns: polling for a condition (`wait`), and the test-only parts of running etcd, managers and
dev clusters. Product code never imports from here (tests/unit/test_layers.py enforces it);
bench/ may, since a benchmark is a test harness too.
"""
