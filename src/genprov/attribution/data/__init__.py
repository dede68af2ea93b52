"""genprov.attribution.data."""
