//! `sessiongate invoke`: a command-line client for the AWS face, as `agentcore invoke` is for
//! AgentCore. It prints streamed SSE events as they arrive, the session id on stderr, and on
//! failure the error type and message with a non-zero exit.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, bail};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::headers::SESSION_ID;

#[derive(clap::Args)]
pub struct InvokeArgs {
    /// The payload: JSON text, `@FILE`, or `-` for standard input.
    pub payload: String,
    /// The gateway's HTTP listener.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub endpoint: String,
    /// Runtime name or ARN.
    #[arg(long, default_value = "default")]
    pub runtime: String,
    /// Session to use (33–256 characters); without it the gateway starts one.
    #[arg(long)]
    pub session_id: Option<String>,
    /// Endpoint qualifier of the runtime.
    #[arg(long)]
    pub qualifier: Option<String>,
    /// A JWT for runtimes with `jwt` auth.
    #[arg(long)]
    pub bearer_token: Option<String>,
    /// Region for SigV4 signing (default: AWS_REGION, AWS_DEFAULT_REGION, or us-east-1).
    /// Requests are signed when AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set and no
    /// bearer token is given.
    #[arg(long)]
    pub region: Option<String>,
}

pub fn run(args: InvokeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(invoke(args))
}

async fn invoke(args: InvokeArgs) -> anyhow::Result<()> {
    let payload = read_payload(&args.payload)?;
    let endpoint = args.endpoint.trim_end_matches('/');
    let runtime = utf8_percent_encode(&args.runtime, NON_ALPHANUMERIC);
    let mut url = format!("{endpoint}/runtimes/{runtime}/invocations");
    if let Some(q) = &args.qualifier {
        url.push_str(&format!(
            "?qualifier={}",
            utf8_percent_encode(q, NON_ALPHANUMERIC)
        ));
    }
    let parsed: http::Uri = url.parse().context("invalid --endpoint")?;
    let host = parsed
        .authority()
        .context("--endpoint needs a host")?
        .to_string();

    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), host),
        ("content-type".into(), "application/json".into()),
        (
            "accept".into(),
            "text/event-stream, application/json".into(),
        ),
    ];
    if let Some(s) = &args.session_id {
        headers.push((SESSION_ID.into(), s.clone()));
    }
    match (&args.bearer_token, aws_credentials()) {
        (Some(token), _) => headers.push(("authorization".into(), format!("Bearer {token}"))),
        (None, Some((akid, secret, token))) => {
            let region = args
                .region
                .clone()
                .or_else(|| std::env::var("AWS_REGION").ok())
                .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                .unwrap_or_else(|| "us-east-1".into());
            let path_and_query = parsed.path_and_query().map_or("/", |p| p.as_str());
            headers.extend(sigv4_headers(
                &akid,
                &secret,
                token,
                &region,
                path_and_query,
                &headers,
                &payload,
            )?);
        }
        (None, None) => {}
    }

    let client = reqwest::Client::new();
    let mut req = client.post(&url).body(payload);
    for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
        req = req.header(k, v);
    }
    let mut resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let session = resp
        .headers()
        .get(SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    eprintln!("session: {session}");
    let status = resp.status();
    if !status.is_success() {
        let kind = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("Error")
            .to_owned();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or(body);
        bail!("{kind} ({}): {message}", status.as_u16());
    }
    // Print as it arrives: SSE events line by line, anything else as is.
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = resp.chunk().await.context("the response stream broke")? {
        out.write_all(&chunk)?;
        out.flush()?;
    }
    Ok(())
}

fn read_payload(arg: &str) -> anyhow::Result<Vec<u8>> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        return Ok(buf);
    }
    if let Some(file) = arg.strip_prefix('@') {
        return std::fs::read(PathBuf::from(file)).with_context(|| format!("cannot read {file}"));
    }
    Ok(arg.as_bytes().to_vec())
}

fn aws_credentials() -> Option<(String, String, Option<String>)> {
    let akid = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
    Some((akid, secret, std::env::var("AWS_SESSION_TOKEN").ok()))
}

/// The headers that sign the request with SigV4, service `bedrock-agentcore`.
fn sigv4_headers(
    akid: &str,
    secret: &str,
    token: Option<String>,
    region: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> anyhow::Result<Vec<(String, String)>> {
    let identity =
        aws_credential_types::Credentials::new(akid, secret, token, None, "sessiongate-invoke")
            .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(auth::sigv4::SERVICE)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()?
        .into();
    let request = SignableRequest::new(
        "POST",
        path_and_query,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )?;
    let (instructions, _) = sign(request, &params)?.into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}
