"""genprov.report."""
