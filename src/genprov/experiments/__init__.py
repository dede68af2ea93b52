"""genprov.experiments."""
