"""Adapters beside legacy department systems: publish their records, write changes back."""
