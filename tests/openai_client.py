"""Drives `rocm-llama serve` with the `openai` Python package (a client no one here wrote).

    python3 tests/openai_client.py BASE_URL API_KEY

Run by tests/server.rs. Each check prints one line; any failure raises and exits non-zero.
"""

import json
import sys

import openai

base_url, api_key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)


def check(what, cond, detail=""):
    if not cond:
        raise SystemExit(f"FAILED: {what}: {detail}")
    print(f"ok: {what}")


models = client.models.list()
names = [m.id for m in models.data]
check("models.list names the model", len(names) == 1, names)
model = names[0]

# Chat, whole.
chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=16,
    temperature=0,
    seed=1,
)
choice = chat.choices[0]
check("chat: a reply", isinstance(choice.message.content, str) and choice.message.content != "", chat)
check("chat: finish_reason", choice.finish_reason in ("stop", "length"), choice.finish_reason)
check("chat: usage", chat.usage.completion_tokens > 0 and chat.usage.prompt_tokens > 0, chat.usage)

# Chat, streamed: the same greedy text in pieces.
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=16,
    temperature=0,
    seed=1,
    stream=True,
)
pieces, finish = [], None
for chunk in stream:
    if chunk.choices:
        delta = chunk.choices[0].delta
        if delta.content:
            pieces.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
check("chat stream: several chunks", len(pieces) > 1, pieces)
check("chat stream: the same greedy text", "".join(pieces) == choice.message.content, ("".join(pieces), choice.message.content))
check("chat stream: finish_reason", finish in ("stop", "length"), finish)

# Text completions, whole and streamed, with n.
comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
check("completions: text", comp.choices[0].text != "", comp)
streamed = "".join(
    c.choices[0].text
    for c in client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
    )
    if c.choices
)
check("completions stream: the same greedy text", streamed == comp.choices[0].text, (streamed, comp.choices[0].text))
many = client.completions.create(model=model, prompt="Once upon a time", max_tokens=4, n=3, temperature=0.8, seed=7)
check("completions: n=3", sorted(c.index for c in many.choices) == [0, 1, 2], many.choices)

# Log-probabilities.
lp = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello."}],
    max_tokens=4,
    temperature=0,
    logprobs=True,
    top_logprobs=3,
)
content = lp.choices[0].logprobs.content
check("logprobs: one entry per token", len(content) == lp.usage.completion_tokens, content)
check(
    "logprobs: top 3, the chosen token first and most likely",
    all(len(t.top_logprobs) == 3 and t.logprob <= 0 and t.top_logprobs[0].logprob == t.logprob for t in content),
    content,
)

# JSON schema.
schema = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
js = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Describe a person as JSON."}],
    max_tokens=64,
    response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
)
value = json.loads(js.choices[0].message.content)
check("json_schema: the reply parses and fits", isinstance(value.get("name"), str) and isinstance(value.get("age"), int), value)

# Embeddings.
emb = client.embeddings.create(model=model, input=["a text", "another text"])
vectors = [d.embedding for d in emb.data]
check("embeddings: two vectors of one size", len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0, len(vectors))
check("embeddings: normalized", abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-3, sum(x * x for x in vectors[0]))

# Prompts in every shape OpenAI takes; several prompts give n choices each.
for prompt in (["One", "Two"], [2, 818, 8858], [[2, 818], [2, 8858]]):
    r = client.completions.create(model=model, prompt=prompt, max_tokens=2, temperature=0)
    expected = 1 if isinstance(prompt[0], int) else len(prompt)
    check(f"completions: prompt {prompt!r}", len(r.choices) == expected, r.choices)
seeded = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, n=2, temperature=1.0, seed=5)
check("completions: seeded n=2 choices differ", seeded.choices[0].text != seeded.choices[1].text, seeded.choices)
lp_chunks = [
    c
    for c in client.completions.create(model=model, prompt="The river", max_tokens=3, logprobs=2, stream=True)
    if c.choices and c.choices[0].logprobs is not None
]
check("completions stream: legacy logprobs filled", len(lp_chunks) >= 3 and lp_chunks[0].choices[0].logprobs.tokens, lp_chunks)
# llama-server's fields through extra_body: top_k 1 is greedy whatever the seed.
k1 = [
    client.completions.create(model=model, prompt="The river", max_tokens=6, temperature=1.5, seed=s, extra_body={"top_k": 1}).choices[0].text
    for s in (1, 2)
]
check("extra_body top_k=1: the same text for two seeds", k1[0] == k1[1], k1)
ids = client.embeddings.create(model=model, input=[[2, 818], [2, 8858]], encoding_format="float")
check("embeddings: token-id input", len(ids.data) == 2, len(ids.data))

# Tools: a forced call comes back parsed, whole and streamed.
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}]
ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
tc = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="required", max_tokens=64, temperature=0)
calls = tc.choices[0].message.tool_calls
check("tools: a parsed call", tc.choices[0].finish_reason == "tool_calls" and calls and calls[0].function.name == "get_weather", tc)
check("tools: arguments fit the schema", isinstance(json.loads(calls[0].function.arguments).get("city"), str), calls[0].function.arguments)
name, args = None, ""
for chunk in client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="required", max_tokens=64, temperature=0, stream=True):
    for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        name = d.function.name or name
        args += d.function.arguments or ""
check("tools stream: the same call in pieces", name == "get_weather" and args == calls[0].function.arguments, (name, args))

# Errors arrive as the package's exceptions.
other = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=1)
check("any model name is served by the one model, named in the reply", other.model == model, other.model)
try:
    openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    raise SystemExit("FAILED: a wrong key was accepted")
except openai.AuthenticationError as e:
    check("a wrong key is AuthenticationError (401)", e.status_code == 401, e)

print("all openai checks passed")
