"""Writes to the system of record. Entry points (admin, commands, consumers) call these."""
