"""Adapters: one technology each, each implementing one port of ``chatcore.ports``."""
