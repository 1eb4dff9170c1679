"""Debugging commands: flow dumps that explain themselves, cluster status."""
