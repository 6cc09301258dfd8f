"""Data: one record type, sources by name, task formats, the poisoned mix, tokenisation."""
