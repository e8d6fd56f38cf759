"""Latency models of devices, model shapes and links (numpy/scipy only)."""
