"""Running stages as Kubernetes Jobs. Only ``api`` imports the kubernetes client."""
