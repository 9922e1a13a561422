"""Merge methods: one file each, listed in ``adapterctl.ops.registry.METHODS``."""
