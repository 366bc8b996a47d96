"""Development tools: stub generation, lint helpers (run as scripts, imported by tests/k8s)."""
