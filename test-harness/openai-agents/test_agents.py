"""The OpenAI Agents SDK (`openai-agents`) running a one-tool agent to completion through
orchestratord's Responses door (its default model API).

Run by crates/orchestratord/tests/e2e/responses_sdk.rs (venv from test-harness/openai-agents/setup.sh)
against a real daemon and llama-server. Environment: LLORCH_URL, LLORCH_TOKEN, MODEL (the real
instruct model; default `chat`), TOOLS_MODEL (the random-weight test model with
test-harness/openai-sdk/tool-template.jinja; default `tiny-tools`). The first turn runs on
TOOLS_MODEL, pushed into its call by `logit_bias` (`@@`, token 25380, opens a call in that
template; the grammar writes the rest): this llama-server build forces no call from the
instruct model. The tool hands the rest of the run to MODEL, which reads the call and its
result and answers with text, ending on its own (the Agents SDK treats a reply cut by
`max_output_tokens`, `response.incomplete`, as an error, as with OpenAI).
Prints `AGENTS SDK OK`; exits non-zero on any failure.
"""

import asyncio
import os
import sys
from typing import Literal

from agents import (Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool,
                    set_tracing_disabled)
from openai import AsyncOpenAI

BASE = os.environ["LLORCH_URL"].rstrip("/")
TOKEN = os.environ["LLORCH_TOKEN"]
MODEL = os.environ.get("MODEL", "chat")
TOOLS_MODEL = os.environ.get("TOOLS_MODEL", "tiny-tools")

set_tracing_disabled(True)
calls = []
ANSWER = ModelSettings(max_tokens=64, temperature=0)
agent = None
client = None


@function_tool
def get_weather(city: Literal["Paris"]) -> str:
    """The weather in a city."""
    calls.append(city)
    # The call is made: the instruct model answers, without the bias that forced the call.
    agent.model = OpenAIResponsesModel(model=MODEL, openai_client=client)
    agent.model_settings = ANSWER
    return f"The weather in {city} is sunny, 18 degrees."


async def main():
    global agent, client
    client = AsyncOpenAI(base_url=BASE + "/v1", api_key=TOKEN, max_retries=0, timeout=120)
    agent = Agent(
        name="weather",
        instructions="You answer questions about the weather. Use the tool.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=TOOLS_MODEL, openai_client=client),
        model_settings=ModelSettings(
            max_tokens=64, temperature=0, parallel_tool_calls=False,
            extra_body={"logit_bias": {"25380": 100}, "seed": 42},
        ),
    )
    result = await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
    print("[agents-sdk] tool calls:", calls, "final:", repr(result.final_output), file=sys.stderr)
    assert calls == ["Paris"], calls
    assert isinstance(result.final_output, str) and result.final_output.strip(), result.final_output
    assert "Paris" in result.final_output or "18" in result.final_output or "sunny" in result.final_output, result.final_output
    kinds = [item.type for item in result.new_items]
    assert "tool_call_item" in kinds and "tool_call_output_item" in kinds, kinds
    assert kinds[-1] == "message_output_item", kinds
    assert len(result.raw_responses) >= 2, result.raw_responses
    assert all(r.response_id and r.response_id.startswith("resp_") for r in result.raw_responses)
    print("AGENTS SDK OK")


asyncio.run(main())
