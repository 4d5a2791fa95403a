"""The repository around the code: docs, deploy manifests, the benchmark's smoke run."""
