"""An AG-UI agent written with the bedrock-agentcore SDK's `AGUIApp`: it answers a run with the
last user message echoed back, and the session id it was given. Usage: ag_ui_agent.py HOST:PORT"""

import sys
import uuid

from ag_ui.core import (
    EventType,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
)
from bedrock_agentcore.runtime.ag_ui import AGUIApp

app = AGUIApp()


@app.entrypoint
async def run(input_data, context):
    yield RunStartedEvent(type=EventType.RUN_STARTED, thread_id=input_data.thread_id, run_id=input_data.run_id)
    message_id = str(uuid.uuid4())
    yield TextMessageStartEvent(type=EventType.TEXT_MESSAGE_START, message_id=message_id, role="assistant")
    last = input_data.messages[-1].content if input_data.messages else ""
    for part in (f"echo: {last}", f" (session {context.session_id})"):
        yield TextMessageContentEvent(type=EventType.TEXT_MESSAGE_CONTENT, message_id=message_id, delta=part)
    yield TextMessageEndEvent(type=EventType.TEXT_MESSAGE_END, message_id=message_id)
    yield RunFinishedEvent(type=EventType.RUN_FINISHED, thread_id=input_data.thread_id, run_id=input_data.run_id)


if __name__ == "__main__":
    host, port = sys.argv[1].rsplit(":", 1)
    app.run(host=host, port=int(port), log_level="warning")
