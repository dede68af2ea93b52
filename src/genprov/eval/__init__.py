"""genprov.eval."""
