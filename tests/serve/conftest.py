import pytest

from tests.serve.server_process import ServerProcess, make_model_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serve-model") / "tiny")


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory):
    """One server per test worker, two API keys; small limits so the tests can reach them."""
    db = tmp_path_factory.mktemp("serve-db") / "sessions.db"
    proc = ServerProcess(model_dir, str(db), settings=["max_prompt_tokens=3000", "max_body_bytes=100000"])
    proc.start()
    yield proc
    proc.stop()
