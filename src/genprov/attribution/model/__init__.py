"""genprov.attribution.model."""
