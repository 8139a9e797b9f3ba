"""Interop tests: the proxy against servers and clients the project did not write."""
