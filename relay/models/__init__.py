"""Pydantic models of the REST API: one source for validation and the OpenAPI doc."""
