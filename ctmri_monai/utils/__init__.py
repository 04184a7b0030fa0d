"""Utilities at the bottom layer: the device resolver, mixed precision, speed switches, fingerprints and the
multi-GPU helpers."""
