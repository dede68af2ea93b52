"""genprov.models."""
