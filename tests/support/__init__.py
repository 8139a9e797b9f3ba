"""Helpers shared by the adapter and end-to-end tests: a mock upstream, a proxy process."""
