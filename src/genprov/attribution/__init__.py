"""genprov.attribution."""
