"""genprov.app."""
