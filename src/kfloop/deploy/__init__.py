"""Deployment: the production pointer, the local deployer, the KServe InferenceService builder."""
