"""The shop example on Litestar (see README.md)."""
