import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    """Run every @pytest.mark.anyio test twice: on asyncio and on trio."""
    return request.param
