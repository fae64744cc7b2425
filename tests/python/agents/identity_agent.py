"""An agent written with the bedrock-agentcore SDK that proves who it acts for: it reads the
workload access token the gateway gave its request (`BedrockAgentCoreContext`), verifies it
against the gateway's published keys (the payload's `jwks` URL) and answers with the verified
claims, and the routing experiment (endpoint, variant) the SDK read from its request's W3C
baggage. Usage: identity_agent.py HOST:PORT AUDIENCE"""

import sys

import jwt
from bedrock_agentcore.runtime import BedrockAgentCoreApp
from bedrock_agentcore.runtime.context import BedrockAgentCoreContext

app = BedrockAgentCoreApp()


@app.entrypoint
def invoke(payload, context):
    experiment = [BedrockAgentCoreContext.get_routing_experiment_arn(),
                  BedrockAgentCoreContext.get_routing_experiment_variant(),
                  context.request.headers.get("baggage") if context.request else None]
    token = BedrockAgentCoreContext.get_workload_access_token()
    if not token or "jwks" not in payload:
        return {"verified": False, "reason": "no workload access token", "experiment": experiment}
    key = jwt.PyJWKClient(payload["jwks"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["EdDSA"], audience=sys.argv[2], issuer="sessiongate")
    return {"verified": True, "claims": claims, "session": context.session_id, "experiment": experiment}


if __name__ == "__main__":
    host, port = sys.argv[1].rsplit(":", 1)
    app.run(host=host, port=int(port))
