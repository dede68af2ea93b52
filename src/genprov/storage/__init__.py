"""genprov.storage."""
