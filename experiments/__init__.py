"""Experiments that check what the project's pipeline learns (see ``docs/reproduction.md``)."""
