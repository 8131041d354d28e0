"""The shop example on FastAPI (see README.md); its config and logic are shared with litestar_app."""
