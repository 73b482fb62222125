"""Booted Debian 12 nodes (systemd-nspawn) for tests that need real systemd: Ansible, units."""
