"""Drives `rocm-llama serve`'s Ollama routes with the `ollama` Python package (a client no one
here wrote).

    python3 tests/ollama_client.py BASE_URL

Run by tests/server.rs. Each check prints one line; any failure raises and exits non-zero.
"""

import json
import sys

import ollama

client = ollama.Client(host=sys.argv[1], timeout=120)


def check(what, cond, detail=""):
    if not cond:
        raise SystemExit(f"FAILED: {what}: {detail}")
    print(f"ok: {what}")


listed = client.list()
check("list: the one served model", len(listed.models) == 1, listed)
name = listed.models[0].model
check("ps: the model is loaded", len(client.ps().models) == 1)
shown = client.show("llama3.2")
check("show: any name shows the served model", shown.details.format == "gguf", shown)

greedy = {"num_predict": 8, "temperature": 0, "num_ctx": 4096}
messages = [{"role": "user", "content": "Name a river."}]
whole = client.chat(model="llama3.2", messages=messages, options=greedy)
check("chat: a whole reply", whole.done and whole.message.role == "assistant" and whole.eval_count > 0, whole)
parts = list(client.chat(model="llama3.2", messages=messages, options=greedy, stream=True))
check("chat: streamed, the last part done", parts[-1].done and not any(p.done for p in parts[:-1]), parts[-1])
streamed = "".join(p.message.content for p in parts)
check("chat: the stream is the whole reply", streamed == whole.message.content, (streamed, whole.message.content))

gen = client.generate(model=name, prompt="The river", raw=True, options={"num_predict": 6, "temperature": 0})
check("generate raw: six tokens", gen.done and gen.eval_count == 6 and gen.done_reason == "length", gen)
pieces = list(client.generate(model=name, prompt="The river", raw=True, options={"num_predict": 6, "temperature": 0}, stream=True))
check("generate raw: streamed the same", "".join(p.response for p in pieces) == gen.response, pieces[-1])
templated = client.generate(model=name, prompt="Hi", system="Be brief.", options={"num_predict": 4, "temperature": 0})
check("generate: through the template", templated.done, templated)

schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
structured = client.chat(model=name, messages=messages, format=schema, options={"num_predict": 64, "temperature": 0})
value = json.loads(structured.message.content)
check("chat format: JSON that fits the schema", isinstance(value.get("ok"), bool), value)

# Tool calls: the server runs Qwen 2.5's template, which renders the tools; a format schema
# makes the base test model write a call, which comes back parsed, its arguments an object.
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
call_schema = {"type": "object", "required": ["name", "arguments"], "properties": {
    "name": {"const": "get_weather"},
    "arguments": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}}}
ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
called = client.chat(model=name, messages=ask, tools=tools, format=call_schema, options={"num_predict": 64, "temperature": 0})
calls = called.message.tool_calls or []
check("chat tools: a parsed call", len(calls) == 1 and calls[0].function.name == "get_weather"
      and isinstance(calls[0].function.arguments.get("city"), str), called.message)
parts = list(client.chat(model=name, messages=ask, tools=tools, format=call_schema,
                         options={"num_predict": 64, "temperature": 0}, stream=True))
streamed_calls = [c for p in parts for c in (p.message.tool_calls or [])]
# (The same call, not necessarily the same city: a prompt partly reused from the KV cache is
# computed in other batch shapes, and greedy picks can differ where two tokens nearly tie.)
check("chat tools: streamed, one call with the same shape",
      [c.function.name for c in streamed_calls] == ["get_weather"]
      and isinstance(streamed_calls[0].function.arguments.get("city"), str), (streamed_calls, calls))

emb = client.embed(model=name, input=["a text", "another text"])
check("embed: two vectors", len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 0, len(emb.embeddings))
short = client.embed(model=name, input="a text", dimensions=8)
check("embed: dimensions", len(short.embeddings[0]) == 8, len(short.embeddings[0]))

try:
    client.generate(model=name, prompt="x", options={"mirostat": 2})
    raise SystemExit("FAILED: a refused option was accepted")
except ollama.ResponseError as e:
    check("a refused option is a 400 naming it", e.status_code == 400 and "mirostat" in e.error, e)

print("all ollama checks passed")
