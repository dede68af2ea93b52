"""genprov.data."""
