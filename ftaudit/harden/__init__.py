"""Hardening: noise-aware training loops, methods (erm, noise, trice, bayesft) and export."""
