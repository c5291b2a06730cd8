"""Helpers of tests/tools/hbone_peer.py (certificates, self-test). Standard library plus the
`h2` and `cryptography` packages only: nothing here may share code with our Rust."""
