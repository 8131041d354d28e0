import seawall


def test_all_is_sorted_and_complete() -> None:
    assert seawall.__all__ == sorted(seawall.__all__)
    public = {n for n in dir(seawall) if n.isidentifier() and not n.startswith("_")}
    # every public name in the namespace is exported (submodules aside)
    modules = {
        "asgi",
        "db",
        "fastapi",
        "httpx2",
        "litestar",
        "outbox",
        "redis",
        "stripe",
        "testing",
        "telemetry",
    }
    assert public - modules - set(seawall.__all__) == set()
    for name in seawall.__all__:
        assert getattr(seawall, name) is not None


def test_version_is_a_string() -> None:
    assert isinstance(seawall.__version__, str)
    assert seawall.__version__[0].isdigit()
