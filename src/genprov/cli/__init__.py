"""genprov.cli."""
