"""devcluster: a real local Kubernetes control plane with simulated NVIDIA GPU nodes."""
