"""Command-line entry points: ``openmix-train``, ``openmix-report``."""
