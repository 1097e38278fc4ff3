"""Drives `rocm-llama serve` with LangChain's `langchain-openai` package (a client no one here
wrote): ChatOpenAI invoke, stream, bind_tools and with_structured_output, and
OpenAIEmbeddings with its default token-id input.

    python3 tests/langchain_client.py BASE_URL

Run by tests/server.rs. Each check prints one line; any failure raises and exits non-zero.
"""

import sys

import tiktoken
import tiktoken.model
import tiktoken.registry
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, Field

base_url = sys.argv[1]


def check(what, cond, detail=""):
    if not cond:
        raise SystemExit(f"FAILED: {what}: {detail}")
    print(f"ok: {what}")


llm = ChatOpenAI(base_url=base_url, api_key="none", model="any", temperature=0, max_tokens=16, max_retries=0)
reply = llm.invoke("Name a river.")
check("invoke: a reply", isinstance(reply.content, str) and reply.content != "", reply)
streamed = "".join(chunk.content for chunk in llm.stream("Name a river."))
check("stream: the same greedy text", streamed == reply.content, (streamed, reply.content))


class Weather(BaseModel):
    """Weather in a city."""

    city: str = Field(description="the city", max_length=20)


bound = ChatOpenAI(base_url=base_url, api_key="none", model="any", temperature=0, max_tokens=64, max_retries=0)
called = bound.bind_tools([Weather], tool_choice="Weather").invoke("What is the weather in Oslo?")
check("bind_tools: a parsed call", called.tool_calls and called.tool_calls[0]["name"] == "Weather", called)
check("bind_tools: arguments as a dict", isinstance(called.tool_calls[0]["args"].get("city"), str), called.tool_calls)

structured = bound.with_structured_output(Weather).invoke("What is the weather in Oslo?")
check("with_structured_output: a Weather", isinstance(structured, Weather) and isinstance(structured.city, str), structured)

# OpenAIEmbeddings tokenizes with tiktoken and sends token ids. A byte-level encoding made
# here stands in for OpenAI's (which tiktoken would download); the ids it gives (0..255) are
# in any model's vocabulary.
tiktoken.registry.ENCODINGS["rocm_llama_bytes"] = tiktoken.Encoding(
    name="rocm_llama_bytes",
    pat_str=r"[^\n]+|\n",
    mergeable_ranks={bytes([i]): i for i in range(256)},
    special_tokens={},
)
tiktoken.model.MODEL_TO_ENCODING["rocm-llama-test"] = "rocm_llama_bytes"
emb = OpenAIEmbeddings(base_url=base_url, api_key="none", model="rocm-llama-test", max_retries=0)
vectors = emb.embed_documents(["a text", "another text"])
check("OpenAIEmbeddings: token-id input, two vectors", len(vectors) == 2 and len(vectors[0]) > 0, len(vectors))
query = emb.embed_query("a text")
check("OpenAIEmbeddings: embed_query", len(query) == len(vectors[0]), len(query))

print("all langchain checks passed")
