"""tnn.clients: the `openai` SDK's clients set up for tnn-serve, and `tnn generate` / `tnn chat`.

Never imports torch. Quick use::

    from tnn.clients import Client

    client = Client()  # $TNN_URL (default http://127.0.0.1:8000) and $TNN_API_KEY
    model = client.models.list().data[0].id
    print(client.completions.create(model=model, prompt="Once upon a time", max_tokens=32).choices[0].text)
    print(client.tokenize("Once upon a time"), client.ready())

Errors are the SDK's (`openai.BadRequestError`, `openai.RateLimitError`, `openai.APIConnectionError`, ...).
"""

from tnn.clients.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client"]
