"""genprov.privacy."""
