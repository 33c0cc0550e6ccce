"""Pipeline tooling (pipeline environment): component discovery, docs, compilation."""
