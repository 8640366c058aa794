"""``glassformer serve`` with real weights (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) through the official ``openai``
client against a live server: the answers are the ones ``generate`` and ``SentenceEncoder`` give, streamed or whole,
one request at a time or eight at once; bad requests get OpenAI's error shape; the chat page works in a browser."""

import base64
import collections
import concurrent.futures
import contextlib
import http.client
import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from server_harness import call, live_server, served

from glassformer import GPT, Tokenizer
from glassformer.data.pretrained import resolve_shortcut
from glassformer.nn.linear import packed_weights
from glassformer.pipelines.sentence_encoder import SentenceEncoder
from glassformer.serving import ServeConfig

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
openai = pytest.importorskip("openai", reason="the openai client is a test dependency (pip install -e '.[dev]')")

CONTEXT = 512
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village",
    "The three primary colours are",
    "Water boils at",
    "import numpy as np\n",
    "The largest planet in the solar system is",
    "Dear Sir or Madam,",
]


@pytest.fixture(scope="module")
def smollm2():
    directory = resolve_shortcut("smollm2")
    return GPT.from_pretrained(directory), Tokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def minilm():
    return SentenceEncoder.from_pretrained(resolve_shortcut("minilm"))


@pytest.fixture(scope="module")
def server(smollm2, minilm):
    def load():
        s = served(*smollm2, name="smollm2", max_batch=8, max_context=CONTEXT)
        s.encoder, s.embedding_name = minilm, "minilm"
        return s

    with live_server(load, ServeConfig(max_batch=8, max_context=CONTEXT)) as (base, state):
        yield base, state


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def greedy(smollm2, ids, n):
    model, tokenizer = smollm2
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, eos_token_id=model.config.eos_token_id)
    new = out[0, len(ids) :].tolist()
    return tokenizer.decode(new, skip_special_tokens=True)


def test_models_lists_the_model_and_the_encoder(client):
    assert [m.id for m in client.models.list().data] == ["smollm2", "minilm"]


def test_a_completion_is_generate_s_greedy_answer(client, smollm2):
    answer = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=8, temperature=0)
    choice = answer.choices[0]
    assert "Paris" in choice.text and choice.finish_reason == "length"
    assert choice.text == greedy(smollm2, smollm2[1].encode(PROMPTS[0]), 8)
    assert answer.usage.completion_tokens == 8 and answer.usage.prompt_tokens == len(smollm2[1].encode(PROMPTS[0]))


def test_chat_answers_and_its_stream_reassembles_to_the_same_answer(client, smollm2):
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    whole = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=40)
    content = whole.choices[0].message.content
    assert "Paris" in content and whole.choices[0].finish_reason == "stop"  # ended by <|im_end|>, not the length
    assert content == greedy(smollm2, smollm2[1].encode_chat(messages), 40)
    chunks = list(
        client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=40, stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant" and len(chunks) > 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_completion_reports_usage_when_asked(client):
    chunks = list(
        client.completions.create(
            model="smollm2", prompt="Water boils at", max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-2].choices[0].finish_reason == "length"


def reference_logprobs(smollm2, ids, new):
    """The model's log-softmax at each new token, by the modules over the whole sequence."""
    model, _ = smollm2
    with torch.no_grad():
        logits = model(torch.tensor([ids + new]))[0, len(ids) - 1 : -1].float()
    return logits.log_softmax(-1)


def test_chat_logprobs_whole_and_streamed_are_the_model_s(client, smollm2):
    """Each token's log-probability and its top 3 alternatives, in the order of the model's distribution; the
    stream carries the same entries; the tokens' bytes spell the answer."""
    messages = [{"role": "user", "content": "Describe the sea in a long paragraph."}]
    ask = dict(model="smollm2", messages=messages, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**ask)
    entries = whole.choices[0].logprobs.content
    tokenizer = smollm2[1]
    ids = tokenizer.encode_chat(messages)
    new = smollm2[0].generate(torch.tensor([ids]), max_new_tokens=8)[0, len(ids) :].tolist()
    expected = reference_logprobs(smollm2, ids, new)
    assert len(entries) == len(new) == 8
    for i, entry in enumerate(entries):
        assert abs(entry.logprob - float(expected[i, new[i]])) <= 1e-3
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert abs(entry.top_logprobs[0].logprob - float(expected[i].max())) <= 1e-3 and len(entry.top_logprobs) == 3
    assert bytes(b for e in entries for b in e.bytes).decode() == whole.choices[0].message.content
    streamed = [e for c in client.chat.completions.create(**ask, stream=True) if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]  # fmt: skip
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]


def test_completion_logprobs_in_the_legacy_shape(client, smollm2):
    answer = client.completions.create(model="smollm2", prompt=PROMPTS[4], max_tokens=5, temperature=0, logprobs=2)
    logprobs = answer.choices[0].logprobs
    assert "".join(logprobs.tokens) == answer.choices[0].text and len(logprobs.token_logprobs) == 5
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(5)]
    assert all(len(top) <= 2 and max(top.values()) >= lp - 1e-6 for top, lp in
               zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True))  # fmt: skip


def test_n_choices_each_seeded_and_streamed_by_index(client, smollm2):
    """n=3 sampled choices: choice i is the answer of one choice with seed + i; a stream interleaves the choices by
    index and reassembles to the same texts; usage counts the prompt once."""
    ask = dict(model="smollm2", prompt=PROMPTS[2], max_tokens=10, temperature=1.0, seed=40)
    three = client.completions.create(**ask, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2] and len({c.text for c in three.choices}) > 1
    for i in range(3):
        assert client.completions.create(**{**ask, "seed": 40 + i}).choices[0].text == three.choices[i].text
    texts = ["", "", ""]
    for chunk in client.completions.create(**ask, n=3, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == [c.text for c in three.choices]
    assert three.usage.completion_tokens == 30 and three.usage.prompt_tokens == len(smollm2[1].encode(PROMPTS[2]))


def test_frequency_and_presence_penalties_change_the_greedy_answer_as_openai_defines(client, smollm2):
    """A strong frequency penalty keeps a greedy answer from repeating itself; the same request without it equals
    generate's greedy answer, and with it equals generate with the same penalty (the one sampler)."""
    prompt = "one one one one one one one one"
    plain = client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0).choices[0].text
    penalized = (
        client.completions.create(
            model="smollm2", prompt=prompt, max_tokens=12, temperature=0, frequency_penalty=2.0, presence_penalty=1.0
        )
        .choices[0]
        .text
    )
    model, tokenizer = smollm2
    ids = torch.tensor([tokenizer.encode(prompt)])
    for text, options in ((plain, {}), (penalized, {"frequency_penalty": 2.0, "presence_penalty": 1.0})):
        out = model.generate(ids, max_new_tokens=12, eos_token_id=model.config.eos_token_id, **options)
        assert text == tokenizer.decode(out[0, ids.size(1) :].tolist(), skip_special_tokens=True)

    def most_repeated(text: str) -> int:
        return max(collections.Counter(tokenizer.encode(text)).values())

    assert most_repeated(penalized) < most_repeated(plain)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "languages": {"type": "array", "items": {"enum": ["en", "fr", "de"]}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}


def test_continue_final_message_continues_the_assistant_s_unfinished_answer(client, smollm2):
    """vLLM's option: the last message is the assistant's, left open, and the model goes on from its last word."""
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is"}]  # fmt: skip
    ids = smollm2[1].encode_chat(messages, continue_final_message=True)
    assert smollm2[1].decode(ids).endswith("<|im_start|>assistant\nThe capital of France is")
    answer = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=6,
                                            extra_body={"continue_final_message": True})  # fmt: skip
    assert answer.choices[0].message.content == greedy(smollm2, ids, 6) and "Paris" in answer.choices[0].message.content


def test_top_k_one_samples_the_greedy_answer(client):
    """vLLM's ``top_k``: only the k most likely tokens are drawn from; with k = 1 any temperature is greedy."""
    ask = dict(model="smollm2", prompt=PROMPTS[1], max_tokens=10)
    plain = client.completions.create(**ask, temperature=0).choices[0].text
    hot = [client.completions.create(**ask, temperature=1.8, seed=s, extra_body={"top_k": k}).choices[0].text
           for s, k in ((1, 1), (2, 1), (1, 0))]  # fmt: skip
    assert hot[0] == hot[1] == plain and hot[2] != plain  # top_k 0: off


def test_json_schema_answers_parse_and_validate_whole_and_streamed(client):
    """OpenAI's json_schema response_format, chat and completions, greedy and sampled, whole and streamed: every
    answer parses and validates against its schema (jsonschema), and ends by the grammar ("stop")."""
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    messages = [{"role": "user", "content": "Describe a famous scientist as JSON."}]
    answers = [c.message.content for c in client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=120, temperature=0.9, seed=1, n=3, response_format=fmt
    ).choices]  # fmt: skip
    chunks = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=120, temperature=0,
                                            response_format=fmt, stream=True)  # fmt: skip
    answers.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    completion = client.completions.create(model="smollm2", prompt="A person, as JSON: ", max_tokens=120,
                                           temperature=0, extra_body={"response_format": fmt})  # fmt: skip
    answers.append(completion.choices[0].text)
    for answer in answers:
        jsonschema.validate(json.loads(answer), PERSON)
    assert completion.choices[0].finish_reason == "stop"


def test_json_object_mode_answers_a_json_object(client):
    """Any JSON object; it ends by the grammar (an answer cut by max_tokens would end with finish_reason length)."""
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": 'Answer as JSON: {"capital of France": ...}'}],
        max_tokens=200, temperature=0, response_format={"type": "json_object"},
    ).choices[0]  # fmt: skip
    assert answer.finish_reason == "stop" and isinstance(json.loads(answer.message.content), dict)


def test_embeddings_equal_the_sentence_encoder(client, minilm):
    texts = ["A man is eating food.", "Someone is having a meal.", "The sky is blue."]
    for encoding in (None, "float", "base64"):  # None: the client asks for base64 and decodes it itself
        options = {"encoding_format": encoding} if encoding else {}
        answer = client.embeddings.create(model="minilm", input=texts, **options)
        if encoding == "base64":  # asked for explicitly, the client hands the string over as it came
            got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in answer.data])
        else:
            got = np.array([d.embedding for d in answer.data], dtype=np.float32)
        np.testing.assert_allclose(got, minilm.embed(texts).numpy(), atol=1e-6)
        assert answer.usage.prompt_tokens > len(texts)


def test_eight_prompts_at_once_each_get_their_one_at_a_time_greedy_answer(client, smollm2, server):
    n = 10
    with packed_weights(smollm2[0]):  # packed once for the eight generate calls, as the server holds it packed
        expected = [greedy(smollm2, smollm2[1].encode(p), n) for p in PROMPTS]

    def ask(prompt):
        return client.completions.create(model="smollm2", prompt=prompt, max_tokens=n, temperature=0).choices[0].text

    steps_before = server[1].scheduler.counters.steps
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(ask, PROMPTS))
    assert answers == expected
    # they shared decoding steps: far fewer than one step per token per request
    assert server[1].scheduler.counters.steps - steps_before < len(PROMPTS) * (n - 1)


BAD_REQUESTS = [
    ("/v1/completions", b"{not json", "not valid JSON"),
    ("/v1/completions", b"[1, 2]", "must be a JSON object"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": -3}, "max_tokens must be >= 1"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": "ten"}, "max_tokens must be an integer"),
    ("/v1/completions", {"prompt": "Hi", "temperature": -0.5}, "temperature must be between 0 and 2"),
    ("/v1/completions", {"prompt": "Hi", "top_p": 1.5}, "top_p must be between 0 and 1"),
    ("/v1/completions", {"prompt": "Hi", "stream": "yes"}, "stream must be true or false"),
    ("/v1/completions", {"prompt": "Hi", "n": 0}, "n must be between 1 and 16"),
    ("/v1/completions", {"prompt": "Hi", "logprobs": 9}, "logprobs must be between 0 and 5"),
    ("/v1/completions", {"prompt": "Hi", "presence_penalty": 3}, "presence_penalty must be between -2 and 2"),
    ("/v1/completions", {"prompt": "Hi", "echo": True}, "echo is not supported"),
    ("/v1/completions", {"prompt": "Hi", "response_format": {"type": "xml"}}, "response_format must be"),
    (
        "/v1/completions",
        {"prompt": "Hi", "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "json_schema.schema must be a JSON schema object",
    ),
    (
        "/v1/completions",
        {
            "prompt": "Hi",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}},
        },
        "the JSON schema cannot be used: Invalid type: objectx",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        "top_logprobs needs logprobs: true",
    ),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 30},
        "top_logprobs must be between 0 and 20",
    ),
    ("/v1/completions", {"prompt": "Hi", "top_k": -2}, "top_k must be >= -1"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "continue_final_message": True},
        "continue_final_message needs the last message to be the assistant's",
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "assistant", "content": "x"}],
            "continue_final_message": True,
            "add_generation_prompt": True,
        },
        "exclude each other",
    ),
    ("/v1/completions", {"prompt": "Hi", "stop": [1]}, "stop must be a string"),
    ("/v1/completions", {"prompt": ""}, "prompt is empty"),
    ("/v1/completions", {"prompt": [10**9]}, "outside the vocabulary"),
    ("/v1/completions", {"prompt": "word " * 600}, "this server's context is 512"),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 600}, "exceeds this server's context of 512"),
    ("/v1/chat/completions", {"messages": []}, "messages must be a non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "must have a role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "content must be a string"),
    ("/v1/embeddings", {"input": []}, "input must be a non-empty string"),
]


@pytest.mark.parametrize(("path", "body", "message"), BAD_REQUESTS, ids=[m for _, _, m in BAD_REQUESTS])
def test_bad_requests_get_a_400_in_openai_s_error_shape(server, path, body, message):
    status, answer, _ = call("POST", server[0] + path, body)
    assert status == 400, answer
    assert set(answer["error"]) == {"message", "type", "code", "param"} and message in answer["error"]["message"]


def test_a_body_past_16_mib_is_refused_with_a_413_before_it_is_read(server):
    host, port = server[0].removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/v1/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(17 << 20))
    connection.endheaders()
    connection.send(b'{"prompt": "' + b"a" * 1000)  # the rest never comes: the answer must not wait for it
    response = connection.getresponse()
    assert response.status == 413 and "larger than 16 MiB" in json.loads(response.read())["error"]["message"]
    connection.close()


def test_unknown_fields_are_ignored_and_unknown_models_named(server):
    status, answer, _ = call(
        "POST", server[0] + "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "user": "x", "foo": 1}
    )
    assert status == 200 and answer["choices"][0]["finish_reason"] == "length"
    status, answer, _ = call("POST", server[0] + "/v1/completions", {"model": "gpt-4", "prompt": "Hi"})
    assert status == 404 and "serves 'smollm2'" in answer["error"]["message"]


@contextlib.contextmanager
def chat_page(server):
    """The server's page in Debian's Chromium (headless): ``(page, outside, errors, requests)`` where ``outside``
    collects requests to anywhere but this server (aborted), ``errors`` the page's errors and ``requests`` the JSON
    bodies the page posted."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install -y chromium; .ci/run does)")
    base = server[0]
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(chromium), headless=True)
        except Exception as error:  # e.g. a Chromium that cannot start in this container
            pytest.skip(f"Chromium did not start: {error}")
        outside, errors, requests = [], [], []
        context = browser.new_context(viewport={"width": 1300, "height": 900})

        def route(route):
            if route.request.url.startswith(base):
                if route.request.method == "POST":
                    requests.append(json.loads(route.request.post_data))
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        yield page, outside, errors, requests
        browser.close()


def test_the_chat_page_streams_a_reply_in_a_browser(server):
    with chat_page(server) as (page, outside, errors, _):
        assert page.inner_text("#model") == "smollm2"
        page.fill("#input", "What is the capital of France?")
        page.press("#input", "Enter")
        page.wait_for_selector(".assistant[data-streaming=false]", timeout=60_000)
        reply = page.inner_text(".assistant")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat_page.png"))
    assert "Paris" in reply and page_user_text_ok(reply)
    assert outside == [] and errors == []


def slide(page, selector: str, value: float, event: str) -> None:
    """Move a range input as a hand would: its value, then the event ("input" while dragging, "change" on release)."""
    events = ["input"] if event == "input" else ["input", "change"]
    script = "; ".join(f"e.dispatchEvent(new Event('{name}'))" for name in events)
    page.eval_on_selector(selector, f"(e) => {{ e.value = '{value}'; {script}; }}")


def test_the_next_token_view_shows_each_token_s_alternatives_and_rewrites_from_a_token(server, client):
    """Type, watch the distribution at each token, move a slider (the shares change at once, no request), pick
    another token (the answer is rewritten from there), release a slider (re-sampled from the selected token)."""
    with chat_page(server) as (page, outside, errors, requests):
        page.check("#live")
        assert page.locator("#inspector").is_visible()
        slide(page, "#temperature", 0, "input")  # greedy: the answer the API gives
        slide(page, "#max-tokens", 24, "input")
        page.fill("#input", "What is the capital of France?")
        page.press("#input", "Enter")
        page.wait_for_selector(".assistant[data-streaming=false]", timeout=60_000)
        tokens = page.locator(".assistant .token")
        first_answer = page.inner_text(".assistant")
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        greedy = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=24)
        assert first_answer.startswith(greedy.choices[0].message.content) and "Paris" in first_answer
        assert requests[-1]["logprobs"] is True and requests[-1]["top_logprobs"] == 20

        tokens.nth(0).click()  # its 20 alternatives, most likely first; temperature 0 puts all on the first
        rows = page.locator("#distribution tbody tr")
        assert rows.count() == 20
        model = [
            float(r)
            for r in page.eval_on_selector_all("#distribution tbody tr", "rs => rs.map(r => r.dataset.probability)")
        ]
        after = [
            float(r) for r in page.eval_on_selector_all("#distribution tbody tr", "rs => rs.map(r => r.dataset.after)")
        ]
        assert model == sorted(model, reverse=True) and 0 < sum(model) <= 1.0001 and after == [1.0] + [0.0] * 19
        sent = len(requests)
        slide(page, "#temperature", 1.5, "input")  # dragging: the shares change at once, no request is made
        after = [
            float(r) for r in page.eval_on_selector_all("#distribution tbody tr", "rs => rs.map(r => r.dataset.after)")
        ]
        assert after[0] < 1 and after[1] > 0 and sum(after) == pytest.approx(1, abs=1e-3) and len(requests) == sent

        slide(page, "#temperature", 0, "input")  # back to greedy, still without a request
        alternative = page.inner_text("#distribution tbody tr:nth-child(2) td:first-child")
        rows.nth(1).click()  # write the second most likely token first, then continue
        page.wait_for_selector(".assistant[data-streaming=false]", timeout=60_000)
        assert requests[-1]["continue_final_message"] is True and requests[-1]["messages"][-1]["role"] == "assistant"
        assert json.loads(f'"{alternative}"') == requests[-1]["messages"][-1]["content"]
        assert page.inner_text(".assistant") != first_answer
        assert tokens.nth(0).inner_text() == json.loads(f'"{alternative}"')

        tokens.nth(1).click()
        slide(page, "#top-k", 5, "input")
        slide(page, "#temperature", 1.0, "change")  # released: sampled again from token 2 with these settings
        page.wait_for_selector(".assistant[data-streaming=false]", timeout=60_000)
        sent = requests[-1]
        assert (sent["temperature"], sent["top_k"], sent["continue_final_message"]) == (1.0, 5, True)
        assert sent["messages"][-1]["content"] == json.loads(f'"{alternative}"')  # token 2 is drawn again
        # what the page shows is the server's answer to that request (seeded: the same whole as streamed)
        whole = {**sent, "stream": False, "logprobs": False, "top_logprobs": None}
        status, again, _ = call("POST", server[0] + "/v1/chat/completions", whole)
        assert status == 200
        shown = page.inner_text(".assistant")
        assert shown.startswith(json.loads(f'"{alternative}"') + again["choices"][0]["message"]["content"])
        page.screenshot(path=str(ARTIFACTS / "chat_page_next_token_view.png"))
    assert outside == [] and errors == []


def page_user_text_ok(reply: str) -> bool:
    return "<|im_end|>" not in reply and "<|im_start|>" not in reply


def metric_samples(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server[0] + "/metrics", timeout=30) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_a_repeated_system_prompt_is_read_from_the_prefix_cache(client, server, smollm2):
    """The second chat with the same long system prompt copies its blocks' keys and values instead of running
    them (the prefix-cache counter grows by them), and still answers exactly the greedy answer."""
    system = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly and plainly." for i in range(20))
    chats = [[{"role": "system", "content": system}, {"role": "user", "content": question}]
             for question in ("What is the capital of France?", "What is two plus two?")]  # fmt: skip
    before = metric_samples(server)[("glassformer_prefix_cache_hit_tokens_total", ())]
    answers = [client.chat.completions.create(model="smollm2", messages=chat, temperature=0, max_tokens=8)
               for chat in chats]  # fmt: skip
    hits = metric_samples(server)[("glassformer_prefix_cache_hit_tokens_total", ())] - before
    first, second = (smollm2[1].encode_chat(chat) for chat in chats)
    common = next(i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y)
    assert common > 200 and hits >= common // 32 * 32
    assert answers[1].choices[0].message.content == greedy(smollm2, second, 8)
    assert metric_samples(server)[("glassformer_prefix_cache_blocks", ())] >= common // 32


def test_health_and_metrics_count_the_work(server):
    """/health: JSON counters and the memory plan; /metrics: Prometheus's text, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    time.sleep(0.05)
    status, health, _ = call("GET", server[0] + "/health")
    assert status == 200 and health["status"] == "ok" and health["active"] == 0
    assert health["finished"] >= 1 and health["memory"]["budget"] > health["memory"]["weights"]
    with urllib.request.urlopen(server[0] + "/metrics", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("glassformer_requests_total", (("outcome", "finished"),))] == health["finished"]
    assert samples[("glassformer_generated_tokens_total", ())] == health["generated_tokens"]
    assert samples[("glassformer_time_to_first_token_seconds_count", ())] >= health["finished"]
    assert samples[("glassformer_inter_token_seconds_count", ())] >= 1
    # every decoding step timed, and the per-token work after it: some, and less than the steps themselves here
    steps = samples[("glassformer_decoding_steps_total", ())]
    assert samples[("glassformer_step_seconds_count", ())] == samples[("glassformer_step_emit_seconds_count", ())]
    assert samples[("glassformer_step_seconds_count", ())] == steps > 0
    assert 0 < samples[("glassformer_step_emit_seconds_sum", ())] < samples[("glassformer_step_seconds_sum", ())]
    assert samples[("glassformer_requests_running", ())] == 0 and samples[("glassformer_requests_waiting", ())] == 0
    # the paged cache: with nothing running, the blocks in use are the prefix cache's, and every block is counted
    used, free = samples[("glassformer_kv_blocks_used", ())], samples[("glassformer_kv_blocks_free", ())]
    assert used == samples[("glassformer_prefix_cache_blocks", ())]
    assert used + free == server[1].scheduler.cache.blocks and samples[("glassformer_preemptions_total", ())] == 0
