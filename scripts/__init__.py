"""Repository scripts run by make targets and the CI workflows (importable by tests/infra)."""
