//! The one answer every transport gives a JSON-RPC message engram cannot
//! serve, so a client that sent something wrong learns what, whichever door
//! it used:
//! * not JSON -> `-32700 Parse error` (id null);
//! * JSON but not a message (an array, a request without `method`, an odd
//!   `id`) -> `-32600 Invalid Request`, echoing the id when there is one;
//! * a request for a method engram serves whose `params` do not fit it
//!   (`tools/call` without `name`) -> `-32602 Invalid params` naming what
//!   is wrong. rmcp reads such a request as a custom method and would answer
//!   `-32601 Method not found`, which tells the client nothing true;
//! * a malformed *notification* gets no answer (notifications never do).

use rmcp::RoleServer;
use rmcp::model::{
    CallToolRequest, ClientRequest, CompleteRequest, GetPromptRequest, InitializeRequest,
    JsonRpcMessage, ListPromptsRequest, ListResourceTemplatesRequest, ListResourcesRequest,
    ListToolsRequest, ReadResourceRequest,
};
use rmcp::service::RxJsonRpcMessage;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;

/// What to do with one incoming message.
#[derive(Debug)]
pub enum Verdict {
    /// Hand it to the server.
    Serve(Box<RxJsonRpcMessage<RoleServer>>),
    /// Answer it with this error instead.
    Refuse(Refusal),
    /// Drop it: a malformed notification, which gets no answer.
    Drop,
}

/// A JSON-RPC error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The request's id when it could be read, else null.
    pub id: Value,
    pub code: i64,
    pub message: String,
}

impl Refusal {
    /// The error response, as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": self.id,
            "error": {"code": self.code, "message": self.message},
        })
    }
}

/// Reads one message (the text of a stdio line or an HTTP body). A
/// well-formed message is parsed once; the text is read again as plain JSON
/// only to explain what is wrong, or for a custom method's params check.
pub fn read(text: &[u8]) -> Verdict {
    let message = match serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(text) {
        Ok(message) => message,
        Err(e) => return malformed(text, &e),
    };
    if let JsonRpcMessage::Request(request) = &message
        && let ClientRequest::CustomRequest(custom) = &request.request
        && let Ok(value) = serde_json::from_slice::<Value>(text)
        && let Some(problem) = params_problem(&custom.method, &value)
    {
        return Verdict::Refuse(Refusal {
            id: value.get("id").cloned().unwrap_or(Value::Null),
            code: INVALID_PARAMS,
            message: format!("Invalid params for {}: {problem}", custom.method),
        });
    }
    Verdict::Serve(Box::new(message))
}

/// The answer to text that is not a message rmcp reads (`error`: why not).
fn malformed(text: &[u8], error: &serde_json::Error) -> Verdict {
    let value = match serde_json::from_slice::<Value>(text) {
        Ok(value) => value,
        Err(e) => {
            return Verdict::Refuse(Refusal {
                id: Value::Null,
                code: PARSE_ERROR,
                message: format!("Parse error: {e}"),
            });
        }
    };
    let id = value.get("id").cloned();
    let notification = value.is_object() && id.is_none() && value.get("method").is_some();
    if notification {
        tracing::debug!(error = %error, "ignoring a malformed notification");
        return Verdict::Drop;
    }
    let id = id.unwrap_or(Value::Null);
    // A served method with params of the wrong shape (an array, a string)
    // fails to parse at all rather than as a custom request.
    if let Some(method) = value.get("method").and_then(Value::as_str)
        && let Some(problem) = params_problem(method, &value)
    {
        return Verdict::Refuse(Refusal {
            id,
            code: INVALID_PARAMS,
            message: format!("Invalid params for {method}: {problem}"),
        });
    }
    let message = if value.is_array() {
        "Invalid Request: batches are not supported; send one message at a time".to_owned()
    } else {
        format!("Invalid Request: {error}")
    };
    Verdict::Refuse(Refusal {
        id,
        code: INVALID_REQUEST,
        message,
    })
}

/// Why `message`'s params do not fit `method`, for the methods engram
/// serves; `None` for any other method (rightly "not found").
fn params_problem(method: &str, message: &Value) -> Option<String> {
    fn fits<T: DeserializeOwned>(method: &str, message: &Value) -> Option<String> {
        let mut request = json!({ "method": method });
        if let Some(params) = message.get("params") {
            request["params"] = params.clone();
        }
        serde_json::from_value::<T>(request)
            .err()
            .map(|e| e.to_string())
    }
    match method {
        "initialize" => fits::<InitializeRequest>(method, message),
        "tools/list" => fits::<ListToolsRequest>(method, message),
        "tools/call" => fits::<CallToolRequest>(method, message),
        "resources/list" => fits::<ListResourcesRequest>(method, message),
        "resources/templates/list" => fits::<ListResourceTemplatesRequest>(method, message),
        "resources/read" => fits::<ReadResourceRequest>(method, message),
        "prompts/list" => fits::<ListPromptsRequest>(method, message),
        "prompts/get" => fits::<GetPromptRequest>(method, message),
        "completion/complete" => fits::<CompleteRequest>(method, message),
        // Any other method is rightly "not found".
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(text: &str) -> Refusal {
        match read(text.as_bytes()) {
            Verdict::Refuse(r) => r,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn every_kind_of_wrong_gets_its_code() {
        assert_eq!(refusal("{").code, PARSE_ERROR);
        assert_eq!(refusal("{").id, Value::Null);
        assert_eq!(
            refusal(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#).code,
            INVALID_REQUEST
        );
        let missing = refusal(r#"{"id":7,"method":"ping"}"#);
        assert_eq!(
            (missing.code, missing.id.clone()),
            (INVALID_REQUEST, json!(7))
        );

        let bad = refusal(r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{}}"#);
        assert_eq!((bad.code, bad.id.clone()), (INVALID_PARAMS, json!("a")));
        assert!(
            bad.message.contains("tools/call") && bad.message.contains("name"),
            "{}",
            bad.message
        );
        let bad = refusal(r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":[1]}"#);
        assert_eq!(bad.code, INVALID_PARAMS, "{}", bad.message);
    }

    #[test]
    fn good_messages_and_unknown_methods_are_served() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"recall","arguments":{"query":"x"}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"no/such/method","params":{}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ] {
            assert!(matches!(read(text.as_bytes()), Verdict::Serve(_)), "{text}");
        }
        assert!(matches!(
            read(br#"{"jsonrpc":"2.0","method":7}"#),
            Verdict::Drop | Verdict::Refuse(_)
        ));
    }
}
