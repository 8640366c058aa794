import pytest

from glassformer.models.gpt import GPT


@pytest.fixture(scope="session")
def smollm2_float32():
    """SmolLM2-135M-Instruct dequantized to float32, loaded once for the tests that only read it."""
    return GPT.from_pretrained("smollm2")
